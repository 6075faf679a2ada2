"""Edge formats against the SavedModel: size, accuracy, parity, latency and throughput on
this CPU (not part of the tests).

    python benchmarks/edge_formats.py saved_models/best/1 saved_models/dropout03-blood_cell_images/1 \\
        [--set data.root=DIR] [--latency-images 200] [--throughput-batches 20] [--rounds 3]

For each version, the edge files that ``python -m keras_blood.export_edge`` writes into
``<version>/edge/`` are made first where missing (float32 LiteRT and ONNX; int8 LiteRT,
calibrated on the training split). The data is the one each version's recorded config
names; ``--set`` overrides apply to every version's config (``data.root=DIR`` where the
recorded root is not on this machine). Then, on the whole test split of that data:

- size on disk: ``saved_model.pb`` + ``variables/`` for the SavedModel (both signatures),
  the file for an edge model;
- accuracy, and against the SavedModel's probabilities the largest |dp| and the share of
  images with the same predicted class (the float32 parity bar: |dp| <= 1e-4, every class);
- latency at batch 1: the median over ``--latency-images`` single-image calls;
- throughput at batch 64: images per second over ``--throughput-batches`` batches, and the
  process's CPU time per image there (all threads; unlike wall time, little affected by
  other processes on the machine);

both the best of ``--rounds`` rounds (default 3) in which the runtimes take turns, as the
machine may be shared.

Every runtime uses all the CPU's cores (TensorFlow by default; LiteRT, whose default is
one thread, and ONNX Runtime are given ``os.cpu_count()`` threads), after one warm-up call
at each batch size. Prints the README's Markdown table, and on stderr whether each
edge model passes its bar (float32: |dp| <= 1e-4 and every class the same; int8: at most
0.5 points of accuracy lost).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

FLOAT_TOLERANCE = 1e-4
EDGE = [("LiteRT float32", "litert", None), ("LiteRT int8", "litert", "int8"), ("ONNX Runtime", "onnx", None)]


def folder_bytes(paths) -> int:
    return sum(f.stat().st_size for p in paths for f in ([p] if p.is_file() else p.rglob("*")) if f.is_file())


def latency_ms(model, images: np.ndarray, count: int) -> float:
    """Median milliseconds of ``count`` single-image calls."""
    times = []
    for image in images[:count]:
        start = time.perf_counter()
        model(image[None])
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def throughput(model, images: np.ndarray, batches: int, batch_size: int = 64) -> tuple[float, float]:
    """Images per second over ``batches`` batches, and this process's CPU milliseconds per
    image (all threads: what the work costs, whatever else runs on the machine)."""
    starts = [(k * batch_size) % max(len(images) - batch_size, 1) for k in range(batches)]
    wall, cpu = time.perf_counter(), time.process_time()
    for first in starts:
        model(images[first : first + batch_size])
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return batches * batch_size / wall, 1000 * cpu / (batches * batch_size)


def timings(models: dict, images: np.ndarray, args) -> dict[str, tuple[float, float, float]]:
    """(latency ms, images/s, CPU ms per image) per model: the best of ``--rounds`` rounds,
    the models taking turns within a round, so that load from other processes on a shared
    machine weighs on all of them alike and the best round is the least disturbed."""
    for model in models.values():  # warm-up at both batch sizes (LiteRT resizes its input)
        model(images[:1]), model(images[:64])
    best = {name: (float("inf"), 0.0, float("inf")) for name in models}
    for _ in range(args.rounds):
        for name, model in models.items():
            latency = latency_ms(model, images, args.latency_images)
            speed, cpu = throughput(model, images, args.throughput_batches)
            best[name] = (min(best[name][0], latency), max(best[name][1], speed), min(best[name][2], cpu))
    return best


def bench_version(version_dir: Path, overrides: list[str], args) -> list[dict]:
    from keras_blood.config.loading import load_config
    from keras_blood.data import load_data
    from keras_blood.serving.edge import edge_file, export_edge, load_edge_model, predict, saved_model_predictor
    from keras_blood.serving.version import load_version

    for _, fmt, quantize in EDGE:
        if not edge_file(version_dir, fmt, quantize).is_file():
            export_edge(version_dir, fmt, quantize, overrides)
    config = load_config(version_dir / "assets.extra" / "config.yaml", overrides)
    test = load_data(config.data, config.seed).splits["test"]
    version = load_version(version_dir)
    threads = os.cpu_count()
    models = [
        ("SavedModel", saved_model_predictor(version), [version_dir / "saved_model.pb", version_dir / "variables"])
    ]
    models += [
        (name, load_edge_model(edge_file(version_dir, f, q), threads), [edge_file(version_dir, f, q)])
        for name, f, q in EDGE
    ]

    rows, reference = [], None
    for name, model, files in models:
        probs = predict(model, test.images)
        reference = probs if reference is None else reference
        rows.append(
            {
                "model": name,
                "MB": folder_bytes(files) / 1e6,
                "accuracy": float((probs.argmax(1) == test.labels).mean()),
                "max_dp": float(np.abs(probs - reference).max()),
                "same_class": float((probs.argmax(1) == reference.argmax(1)).mean()),
            }
        )
    timed = timings({name: model for name, model, _ in models}, test.images, args)
    for r in rows:
        r["latency_ms"], r["images_per_s"], r["cpu_ms"] = timed[r["model"]]
    print(f"{version_dir} on {config.data.name} test ({len(test.labels)} images), {threads} threads", file=sys.stderr)
    for r in rows:
        r["version"] = f"{version.name}/{version.number}"
    for r in rows[1:]:
        if r["model"] == "LiteRT int8":
            drop = 100 * (rows[0]["accuracy"] - r["accuracy"])
            verdict = f"{drop:.2f} points below the SavedModel ({'PASS' if drop <= 0.5 else 'FAIL'}: at most 0.5)"
        else:
            ok = r["max_dp"] <= FLOAT_TOLERANCE and r["same_class"] == 1.0
            verdict = f"parity {'PASS' if ok else 'FAIL'} (|dp| <= {FLOAT_TOLERANCE:g} and every class the same)"
        print(f"  {r['model']}: {verdict}", file=sys.stderr)
    return rows


def main() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("versions", nargs="+", type=Path)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--latency-images", type=int, default=200)
    parser.add_argument("--throughput-batches", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rows = [row for version in args.versions for row in bench_version(version, args.overrides, args)]
    print(f"\nOn {os.cpu_count()} threads; max |dp| and same class against the SavedModel's probabilities\n")
    print(
        "| version | runtime | size (MB) | test accuracy | max \\|dp\\| | same class | latency, batch 1 (ms) "
        "| throughput, batch 64 (images/s) | CPU per image, batch 64 (ms) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['version']} | {r['model']} | {r['MB']:.2f} | {r['accuracy']:.4f} | {r['max_dp']:.1e} "
            f"| {100 * r['same_class']:.2f}% | {r['latency_ms']:.2f} | {r['images_per_s']:,.0f} | {r['cpu_ms']:.2f} |"
        )


if __name__ == "__main__":
    main()
