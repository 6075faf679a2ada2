"""Benchmark: whole smear fields through a version's ``serving_fields`` signature against the
``count`` command's path, on the same fields (not part of the tests).

    python benchmarks/serving_fields.py saved_models/NAME/N ../shared/data/labs/bccd_fields [--limit 100] [--repeats 3]

- ``serving_fields``: the SavedModel loaded with ``tf.saved_model.load``, one encoded field a
  call (the file's bytes read, then found, cut, prepared and classified in one graph).
- ``count_fields``: :func:`keras_blood.serving.count.count_fields`, the ``count`` command's
  path (decoded, found, windows cut and prepared a cell at a time, classified 64 windows a
  call across fields), without its tables, figures and review crops.
- ``count command``: :func:`keras_blood.evaluation.count_report.write_count`, all of it,
  into a temporary folder.

Each is warmed up on three fields, then timed ``--repeats`` times in turn; the median fields
a second and CPU seconds a field are printed, and how far the two paths' boxes and
probabilities are apart.

``--publish-cost``, instead: the version's ``model.keras`` published again (into a temporary folder,
with its recorded config and recipe) with and without ``serving_fields``, ``--repeats``
times each in turn: the median time a publish takes, the size of ``saved_model.pb`` and
the median time ``tf.saved_model.load`` takes.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run from a checkout without installing


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("version", type=Path, help="a published version (saved_models/NAME/N)")
    parser.add_argument("fields", type=Path, help="a folder of smear fields (*.jpg)")
    parser.add_argument("--limit", type=int, default=100, help="fields timed (the first, by name)")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes of each path")
    parser.add_argument(
        "--publish-cost", action="store_true", help="time publishing with and without the signature instead"
    )
    args = parser.parse_args(argv)
    if args.publish_cost:
        publish_cost(args.version, args.repeats)
        return

    import numpy as np
    import tensorflow as tf

    from keras_blood.evaluation.count_report import write_count
    from keras_blood.serving.count import count_fields
    from keras_blood.serving.count_request import Field
    from keras_blood.serving.fields_signature import FIELD_INPUT, FIELDS_SIGNATURE
    from keras_blood.serving.version import load_version

    paths = sorted(str(path) for path in args.fields.glob("*.jpg"))[: args.limit]
    fields = [Field(path, "sample", Path(path).stem) for path in paths]
    version = load_version(args.version)
    signature = version.loaded.signatures[FIELDS_SIGNATURE]

    def signature_pass(chosen):
        return [
            {
                key: value.numpy()
                for key, value in signature(**{FIELD_INPUT: tf.constant(Path(f.path).read_bytes())}).items()
            }
            for f in chosen
        ]

    def count_pass(chosen):
        return list(count_fields(version, chosen))

    def command_pass(chosen):
        # Its progress bar and sample lines are not wanted here.
        with tempfile.TemporaryDirectory() as folder, open(os.devnull, "w") as quiet:
            with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
                write_count(args.version, chosen, Path(folder) / "out")

    paths_timed = {"serving_fields": signature_pass, "count_fields": count_pass, "count command": command_pass}
    for run in paths_timed.values():
        run(fields[:3])
    rates: dict[str, list[float]] = {name: [] for name in paths_timed}
    cpu: dict[str, list[float]] = {name: [] for name in paths_timed}
    for _ in range(args.repeats):
        for name, run in paths_timed.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            run(fields)
            rates[name].append(len(fields) / (time.perf_counter() - start))
            cpu[name].append((time.process_time() - start_cpu) / len(fields))

    served = signature_pass(fields)
    counted = count_pass(fields)
    box_mismatches, largest = 0, 0.0
    for answer, result in zip(served, counted):
        valid = answer["valid"]
        boxes = [tuple(box) for box in answer["boxes"][valid]]
        if boxes != [(b.xmin, b.ymin, b.xmax, b.ymax) for b in result.boxes]:
            box_mismatches += 1
            continue
        if len(boxes):
            largest = max(largest, float(np.abs(answer["probabilities"][valid] - result.probabilities).max()))
    cells = sum(len(result.boxes) for result in counted)
    print(
        f"{len(fields)} fields ({cells} cells), {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; "
        f"TF threads: intra {tf.config.threading.get_intra_op_parallelism_threads() or 'default'}"
    )
    print("| path | fields/s (median, runs) | CPU s a field |")
    print("|---|---|---|")
    for name in paths_timed:
        runs = ", ".join(f"{rate:.1f}" for rate in rates[name])
        print(f"| {name} | {statistics.median(rates[name]):.1f} ({runs}) | {statistics.median(cpu[name]):.3f} |")
    print(f"fields whose boxes differ: {box_mismatches}; largest probability difference: {largest:.2e}")


def publish_cost(version: Path, repeats: int) -> None:
    """Publish ``version``'s Keras model again with and without ``serving_fields``."""
    import json

    import tensorflow as tf

    from keras_blood.config.loading import load_config
    from keras_blood.serving import export
    from keras_blood.serving.version import load_keras_model

    extra = version / "assets.extra"
    recipe = json.loads((extra / "preparation.json").read_text())
    recipe = {key: recipe[key] for key in ("resize", "center_crop_fraction", "method") if key in recipe}
    class_names = json.loads((extra / "class_names.json").read_text())
    model = load_keras_model(version)
    with_signature = export.serves_fields
    times: dict[bool, list[float]] = {True: [], False: []}
    loads: dict[bool, list[float]] = {True: [], False: []}
    sizes: dict[bool, int] = {}
    with tempfile.TemporaryDirectory() as folder:
        config = load_config(extra / "config.yaml")
        output = {"publish_dir": Path(folder), "publish": "always", "publish_if_better": False}
        config = config.model_copy(update={"output": config.output.model_copy(update=output)})
        for _ in range(repeats):
            for fields in (False, True):
                export.serves_fields = with_signature if fields else (lambda config: False)
                start = time.perf_counter()
                published = export.publish_model(model, config, class_names, {}, recipe)
                times[fields].append(time.perf_counter() - start)
                sizes[fields] = (published / "saved_model.pb").stat().st_size
                start = time.perf_counter()
                tf.saved_model.load(str(published))
                loads[fields].append(time.perf_counter() - start)
    export.serves_fields = with_signature
    print("| serving_fields | publish s (median, runs) | saved_model.pb | tf.saved_model.load s |")
    print("|---|---|---|---|")
    for fields in (False, True):
        runs = ", ".join(f"{seconds:.1f}" for seconds in times[fields])
        print(
            f"| {'with' if fields else 'without'} | {statistics.median(times[fields]):.1f} ({runs}) | "
            f"{sizes[fields] / 1e3:,.0f} kB | {statistics.median(loads[fields]):.2f} |"
        )


if __name__ == "__main__":
    main()
