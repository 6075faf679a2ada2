"""Training throughput of ``python -m keras_blood.train`` against a plain Keras script on
the same model (not part of the tests).

    python benchmarks/train_speed.py --set data.root=../shared/data/bloodmnist \\
        [--configs cnn best] [--epochs 10 3] [--repeats 2]

For each config, ``--repeats`` times, alternately (plain, keras_blood, plain, ...: the two
share the machine's load alike), each in a fresh process:

- plain: the model from ``keras_blood.models.build_model``, compiled with the Task's
  optimizer, loss and ``metrics=["accuracy"]``; NumPy arrays (float32 pixels, one-hot
  labels) into ``model.fit(batch_size=..., shuffle=True, validation_data=...)``, no
  callbacks. A config with augmentation (best.yaml) does the same work per step as
  keras_blood does: its arrays go through ``tf.data`` as a Keras user would write it,
  ``shuffle(len) -> batch -> map(keras_blood.data.augment.make_augment(...)) ->
  prefetch``. Timed: wall seconds of ``model.fit`` alone.
- keras_blood: ``python -m keras_blood.train CONFIG --set train.epochs=N --set
  train.early_stopping_patience=0`` with output folders in a temporary folder. Timed: its
  ``train_seconds`` from metrics.json (the fits alone, not the test pass or the export).

- plain + backup (``--backup``): the plain script with Keras's ``BackupAndRestore`` callback
  as keras_blood sets it (a backup at the end of every epoch), and nothing else: what the
  backup alone costs per epoch.

Both validate every epoch. Test-time augmentation only changes the test pass, so it does
not enter either figure. ``--set`` overrides apply to every side. Prints, per config, each
repeat's seconds and the ratio plain / keras_blood (throughput of keras_blood relative to
plain: 1.0 is as fast, above 1.0 faster), then the medians; with ``--backup`` also the
backup's seconds per epoch (plain + backup minus plain, over the epochs).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def plain_fit_seconds(config_path: Path, overrides: list[str], backup: bool = False) -> float:
    """The plain Keras script: build and compile as the Task does (keras_blood.training.task), time the fit."""
    import keras
    import numpy as np
    import tensorflow as tf

    from keras_blood.config.loading import load_config
    from keras_blood.data import load_data
    from keras_blood.data.augment import make_augment
    from keras_blood.models.registry import build_model
    from keras_blood.training.task import make_optimizer

    config = load_config(config_path, overrides)
    keras.utils.set_random_seed(config.seed)
    data = load_data(config.data, config.seed)
    t = config.train
    if t.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
    model = build_model(config.model, (*config.data.model_size, 3), data.num_classes)
    train, val = data.splits["train"], data.splits["val"]
    model.compile(
        optimizer=make_optimizer(config, steps_per_epoch=-(-len(train) // t.batch_size)),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=t.label_smoothing),
        metrics=["accuracy"],
        jit_compile=t.jit_compile,
    )

    def arrays(split):
        return split.images.astype("float32"), np.eye(data.num_classes, dtype="float32")[split.labels]

    x, y = arrays(train)
    augment = make_augment(config.augment)
    if augment is None:
        fit_data = {"x": x, "y": y, "batch_size": t.batch_size, "shuffle": True}
    else:
        ds = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(x), seed=config.seed).batch(t.batch_size)
        fit_data = {"x": ds.map(augment, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)}
    with tempfile.TemporaryDirectory() as tmp:
        callbacks = [keras.callbacks.BackupAndRestore(tmp, delete_checkpoint=False)] if backup else []
        start = time.perf_counter()
        model.fit(**fit_data, validation_data=arrays(val), epochs=t.epochs, verbose=2, callbacks=callbacks)
        return time.perf_counter() - start


def run(command: list[str]) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    proc = subprocess.run(command, capture_output=True, text=True, env=env)
    if proc.returncode:
        sys.exit(f"failed ({proc.returncode}): {' '.join(command)}\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    return proc


def time_plain(config_path: Path, overrides: list[str], backup: bool = False) -> float:
    command = [sys.executable, __file__, "--plain", str(config_path), *["--backup"] * backup]
    for item in overrides:
        command += ["--set", item]
    return json.loads(run(command).stdout.strip().splitlines()[-1])["fit_seconds"]


def time_keras_blood(config_path: Path, overrides: list[str]) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, "-m", "keras_blood.train", str(config_path)]
        for item in [*overrides, f"output.runs_dir={tmp}/runs", f"output.publish_dir={tmp}/saved_models"]:
            command += ["--set", item]
        run(command)
        (metrics,) = Path(tmp, "runs").glob("*/*/metrics.json")
        return json.loads(metrics.read_text())["train_seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=["cnn", "best"], help="names in configs/ or YAML paths")
    parser.add_argument("--epochs", nargs="+", type=int, default=[10, 3], help="one for all, or one per config")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--backup", action="store_true", help="also time the plain script with BackupAndRestore alone")
    parser.add_argument("--plain", metavar="CONFIG", help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args()
    if args.plain:
        print(json.dumps({"fit_seconds": plain_fit_seconds(Path(args.plain), args.overrides, args.backup)}))
        return
    if len(args.epochs) not in (1, len(args.configs)):
        parser.error("--epochs: one value, or one per config")
    epochs = args.epochs * len(args.configs) if len(args.epochs) == 1 else args.epochs

    backup_header = f" {'+backup s':>9}" if args.backup else ""
    print(
        f"{'config':<8} {'epochs':>6} {'repeat':>6} {'plain s':>8}{backup_header} {'keras_blood s':>13} {'ratio':>6}",
        flush=True,
    )
    for name, n in zip(args.configs, epochs):
        path = Path(name) if name.endswith((".yaml", ".yml")) else REPO / "configs" / f"{name}.yaml"
        overrides = [f"train.epochs={n}", "train.early_stopping_patience=0", *args.overrides]
        rows = []
        for repeat in range(1, args.repeats + 1):
            plain = time_plain(path, overrides)
            backed_up = time_plain(path, overrides, backup=True) if args.backup else None
            ours = time_keras_blood(path, overrides)
            rows.append((plain, ours, backed_up))
            extra = f" {backed_up:>9.1f}" if args.backup else ""
            print(
                f"{path.stem:<8} {n:>6} {repeat:>6} {plain:>8.1f}{extra} {ours:>13.1f} {plain / ours:>6.2f}", flush=True
            )
        plain, ours = (statistics.median(column) for column in list(zip(*rows))[:2])
        ratio = statistics.median(p / o for p, o, _ in rows)
        extra = ""
        if args.backup:
            per_epoch = statistics.median((b - p) / n for p, _, b in rows)
            extra = f" {statistics.median(b for _, _, b in rows):>9.1f}"
        print(f"{path.stem:<8} {n:>6} {'median':>6} {plain:>8.1f}{extra} {ours:>13.1f} {ratio:>6.2f}", flush=True)
        if args.backup:
            print(
                f"{path.stem:<8} BackupAndRestore alone: {per_epoch:+.2f} s per epoch (median over repeats)", flush=True
            )


if __name__ == "__main__":
    main()
