"""Files per second of ``python -m keras_blood.predict`` against decoding alone (not part
of the tests).

    python benchmarks/predict_speed.py saved_models/dropout03-blood_cell_images/1 \\
        ../shared/data/blood-cell-images/dataset2-master/images/TEST [--repeats 5] [--batch-size 64]

Each repeat runs, each in a fresh process, one after the other (so that both share the
machine's load alike):

- decode: predict's own tf.data pipeline without the model (``prepared_batches``: read,
  decode and prepare by the version's recipe, ``num_parallel_calls=AUTOTUNE``, batch,
  prefetch) over the files; then, in the same process, the model alone
  (``serving_default``) on those prepared batches, already in memory.
- predict: ``keras_blood.predict.predict`` on the files, CSV to a temporary folder.

Figures are "after start-up", from the first batch to the last (imports, model loading
and the first call are start-up): files per second, and CPU milliseconds per file (all
threads; on a shared machine this one moves less than the rate). ``predict wall s`` is
the whole predict process, start-up included. Prints each repeat, then the medians.
Last, it checks once that predict's probabilities are the ``serving_bytes`` signature's
on the same files (max |dp|; the CSV keeps 6 decimals).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
COLUMNS = ("decode/s", "predict/s", "predict/decode", "decode ms", "model ms", "predict ms", "predict wall s")


class Clock:
    """Marks of (wall, CPU, files done); figures between the first mark and the last."""

    def __init__(self):
        self.marks: list[tuple[float, float, int]] = []

    def mark(self, files: int) -> None:
        self.marks.append((time.perf_counter(), time.process_time(), files))

    def figures(self) -> tuple[float, float]:
        """Files per second and CPU milliseconds per file."""
        (wall0, cpu0, files0), (wall1, cpu1, files1) = self.marks[0], self.marks[-1]
        return (files1 - files0) / (wall1 - wall0), 1e3 * (cpu1 - cpu0) / (files1 - files0)


def decode_worker(version: Path, folder: Path, batch_size: int) -> dict:
    from keras_blood.serving.predict import prepared_batches
    from keras_blood.serving.request import expand_inputs
    from keras_blood.serving.version import load_version

    loaded = load_version(version)
    clock, batches = Clock(), []
    for _, pixels in prepared_batches(expand_inputs([str(folder)]), loaded.preparation, batch_size):
        batches.append(pixels)
        clock.mark(sum(map(len, batches)))
    decode, decode_ms = clock.figures()
    model_clock, done = Clock(), 0
    for pixels in batches:  # the first call is start-up, as for the others
        loaded.serve(pixels=pixels)["probabilities"].numpy()
        done += len(pixels)
        model_clock.mark(done)
    _, model_ms = model_clock.figures()
    return {"decode": decode, "decode ms": decode_ms, "model ms": model_ms, "files": clock.marks[-1][2]}


class Screen(io.StringIO):
    """predict's screen output, marking the clock whenever a batch of rows is flushed."""

    def __init__(self, clock: Clock):
        super().__init__()
        self.clock = clock

    def flush(self):
        self.clock.mark(self.getvalue().count("\n") - 1)  # rows, less the table's header


def predict_worker(version: Path, folder: Path, batch_size: int) -> dict:
    from keras_blood.serving.predict import predict

    clock = Clock()
    with tempfile.TemporaryDirectory() as tmp:
        _, failed = predict(version, [str(folder)], Path(tmp) / "p.csv", batch_size, out=Screen(clock))
    assert failed == 0, f"{failed} files failed"
    rate, ms = clock.figures()
    return {"predict": rate, "predict ms": ms, "files": clock.marks[-1][2]}


def check_worker(version: Path, folder: Path, batch_size: int) -> dict:
    """max |dp| between predict's CSV and serving_bytes on the same files."""
    import csv

    import numpy as np
    import tensorflow as tf

    from keras_blood.serving.predict import predict

    with tempfile.TemporaryDirectory() as tmp:
        csv_path, _ = predict(version, [str(folder)], Path(tmp) / "p.csv", batch_size, out=io.StringIO())
        with open(csv_path, newline="") as f:
            rows = list(csv.DictReader(f))
    serve = tf.saved_model.load(str(version)).signatures["serving_bytes"]
    classes = list(rows[0])[3:-1]  # path, label, probability, <classes>, error
    worst = 0.0
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        served = serve(images=tf.constant([Path(row["path"]).read_bytes() for row in chunk]))["probabilities"]
        predicted = np.array([[float(row[c]) for c in classes] for row in chunk])
        worst = max(worst, float(np.abs(predicted - served.numpy()).max()))
    return {"max_dp": worst, "files": len(rows)}


WORKERS = {"decode": decode_worker, "predict": predict_worker, "check": check_worker}


def run_worker(kind: str, args: argparse.Namespace) -> dict:
    """The worker's figures, plus ``wall``: its whole process's seconds."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3"}
    command = [sys.executable, __file__, str(args.version), str(args.folder), f"--batch-size={args.batch_size}"]
    start = time.perf_counter()
    proc = subprocess.run([*command, "--worker", kind], capture_output=True, text=True, env=env)
    if proc.returncode:
        sys.exit(f"{kind} worker failed:\n{proc.stderr[-3000:]}")
    return {**json.loads(proc.stdout.strip().splitlines()[-1]), "wall": time.perf_counter() - start}


def table_row(label: str, figures: list[float]) -> str:
    widths = [max(9, len(name)) for name in COLUMNS]
    return f"{label:>6}  " + "  ".join(f"{x:{w}.{2 if x < 10 else 0}f}" for x, w in zip(figures, widths))


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("version", type=Path, help="an exported version folder")
    parser.add_argument("folder", type=Path, help="a folder of images, all readable")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--worker", choices=WORKERS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(WORKERS[args.worker](args.version, args.folder, args.batch_size)))
        return

    print(f"{os.cpu_count()} cores, load average (1, 5, 15 min) at start: {load()}")
    print(f"{'repeat':>6}  " + "  ".join(f"{name:>9}" for name in COLUMNS), flush=True)
    rows = []
    for repeat in range(1, args.repeats + 1):
        decode, predict = run_worker("decode", args), run_worker("predict", args)
        assert decode["files"] == predict["files"]
        ratio = predict["predict"] / decode["decode"]
        ms = [decode["decode ms"], decode["model ms"], predict["predict ms"]]
        rows.append([decode["decode"], predict["predict"], ratio, *ms, predict["wall"]])
        print(table_row(str(repeat), rows[-1]), flush=True)
    print(table_row("median", [statistics.median(column) for column in zip(*rows)]))
    print(f"{decode['files']} files, batch size {args.batch_size}; ms: CPU per file")
    print(f"load average at end: {load()}")
    check = run_worker("check", args)
    print(f"predict vs serving_bytes on the same {check['files']} files: max |dp| = {check['max_dp']:.2g}")


if __name__ == "__main__":
    main()
