"""Train, evaluate and export one experiment.

    python -m keras_blood.train configs/dropout03.yaml [--set train.epochs=3 ...]

Writes a run folder (TensorBoard logs, CSV history, best checkpoint, test metrics and
plots) under ``output.runs_dir/<config name>/<timestamp>/`` and a SavedModel version
under ``output.export_dir/<config name>/<version>/``. The last line printed is the path
of that version.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from keras_blood.cli import config_parser, run_main
from keras_blood.config import Config, load_config, save_config
from keras_blood.errors import DataError, KerasBloodError

REQUIRED_SPLITS = ("train", "val", "test")


@dataclass
class TrainResult:
    model: Any  # the trained keras.Model, best validation weights
    metrics: dict[str, Any]  # test metrics, as written to metrics.json
    run_dir: Path
    export_dir: Path


def new_run_dir(config: Config) -> Path:
    """A fresh folder per run; an existing run is never written into."""
    base = config.output.runs_dir / config.name
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for suffix in ["", *(f"-{i}" for i in range(1, 100))]:
        run_dir = base / f"{stamp}{suffix}"
        try:
            run_dir.mkdir(parents=True, exist_ok=False)
            return run_dir
        except FileExistsError:
            continue
    raise KerasBloodError(f"could not create a new run folder under {base}")


def make_optimizer(config: Config):
    import keras

    t = config.train
    kwargs = {"learning_rate": t.learning_rate}
    if t.weight_decay:
        kwargs["weight_decay"] = t.weight_decay
    if t.optimizer == "sgd":
        return keras.optimizers.SGD(momentum=0.9, nesterov=True, **kwargs)
    return {
        "adam": keras.optimizers.Adam,
        "adamw": keras.optimizers.AdamW,
        "rmsprop": keras.optimizers.RMSprop,
    }[t.optimizer](**kwargs)


def train(config: Config) -> TrainResult:
    """Run the whole experiment: train, evaluate on the test split, export."""
    import keras
    import numpy as np
    import tensorflow as tf

    from keras_blood.color import log_color_extraction, make_preprocess
    from keras_blood.data import load_data
    from keras_blood.data.pipeline import make_dataset
    from keras_blood.export import export_model
    from keras_blood.metrics import classification_metrics, summary_line
    from keras_blood.models import build_model
    from keras_blood.plots import plot_confusion_matrix, plot_learning_curves
    from keras_blood.runtime import describe_devices, seed_everything, select_strategy

    seed_everything(config.seed, config.train.deterministic)
    strategy = select_strategy(config.train.distribute)
    print(f"Device: {describe_devices(strategy)}", flush=True)

    # Everything that can fail on user input happens before the run folder exists.
    data = load_data(config.data, config.seed)
    for split in REQUIRED_SPLITS:
        if split not in data.splits or len(data.splits[split]) == 0:
            raise DataError(f"data source {data.name!r} has no {split!r} examples")
    sizes = ", ".join(f"{k} {len(v)}" for k, v in data.splits.items())
    print(f"Data: {data.name} {data.image_shape}, {data.num_classes} classes; {sizes}", flush=True)

    with strategy.scope():
        model = build_model(config.model, data.image_shape, data.num_classes)
        model.compile(
            optimizer=make_optimizer(config),
            loss=keras.losses.CategoricalCrossentropy(label_smoothing=config.train.label_smoothing),
            metrics=["accuracy"],
            jit_compile=config.train.jit_compile,
        )
    model.summary(print_fn=lambda line, **_: print(line))

    run_dir = new_run_dir(config)
    save_config(config, run_dir / "config.yaml")
    print(f"Run folder: {run_dir}  (tensorboard --logdir {run_dir.parent})", flush=True)
    if config.data.color_extraction:
        log_color_extraction(data.splits["train"], data.class_names, config.data.color, run_dir, config.seed)
    preprocess = make_preprocess(config.data)

    def pipeline(split: str, training: bool = False):
        return make_dataset(
            data.splits[split],
            data.num_classes,
            config.train.batch_size,
            training=training,
            seed=config.seed,
            shuffle_buffer=config.data.shuffle_buffer,
            preprocess=preprocess,
        )

    checkpoint = run_dir / "checkpoints" / "best.weights.h5"
    checkpoint.parent.mkdir()
    callbacks = [
        keras.callbacks.TensorBoard(log_dir=str(run_dir / "logs")),
        keras.callbacks.ModelCheckpoint(
            str(checkpoint), monitor="val_loss", save_best_only=True, save_weights_only=True
        ),
        keras.callbacks.CSVLogger(str(run_dir / "history.csv")),
        keras.callbacks.TerminateOnNaN(),
    ]
    if config.train.early_stopping_patience:
        callbacks.append(
            keras.callbacks.EarlyStopping(
                monitor="val_loss",
                patience=config.train.early_stopping_patience,
                restore_best_weights=True,
            )
        )

    start = time.perf_counter()
    try:
        history = model.fit(
            pipeline("train", training=True),
            validation_data=pipeline("val"),
            epochs=config.train.epochs,
            callbacks=callbacks,
            shuffle=False,  # the tf.data pipeline already shuffles, seeded
            # One line per epoch in logs and CI; a live bar in a terminal.
            verbose=1 if sys.stdout.isatty() else 2,
        ).history
    except KeyboardInterrupt:
        print(f"\nInterrupted. Logs and the best checkpoint so far are in {run_dir}", file=sys.stderr)
        raise
    train_seconds = time.perf_counter() - start

    if any(not math.isfinite(v) for v in history.get("loss", [])):
        raise KerasBloodError(
            f"training diverged (loss became NaN/inf at epoch {len(history['loss'])}); "
            f"lower train.learning_rate (now {config.train.learning_rate}). Logs: {run_dir}"
        )
    # The exported model is the best one on validation, whichever callback stopped training.
    model.load_weights(str(checkpoint))

    print("Evaluating on the test split ...", flush=True)
    test = data.splits["test"]
    probs = model.predict(pipeline("test"), verbose=0)
    metrics = classification_metrics(test.labels, probs, data.class_names)
    metrics.update(
        split="test",
        epochs_run=len(history["loss"]),
        best_epoch=int(np.argmin(history["val_loss"])) + 1,
        best_val_loss=float(np.min(history["val_loss"])),
        best_val_accuracy=float(history["val_accuracy"][int(np.argmin(history["val_loss"]))]),
        train_seconds=round(train_seconds, 1),
        params=int(model.count_params()),
    )
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    with tf.summary.create_file_writer(str(run_dir / "logs" / "test")).as_default():
        for key in ("accuracy", "precision_macro", "recall_macro", "f1_macro", "auc"):
            tf.summary.scalar(f"test/{key}", metrics[key], step=metrics["epochs_run"])
    plot_confusion_matrix(
        metrics["confusion_matrix"], data.class_names, run_dir / "confusion_matrix.png", config.name
    )
    plot_learning_curves(history, run_dir / "learning_curves.png", config.name)

    width = max(len(n) for n in data.class_names)
    print(f"\nTest ({config.name}): {summary_line(metrics)}")
    print(f"{'class':<{width}}  precision  recall     F1  support")
    for name, row in metrics["per_class"].items():
        print(
            f"{name:<{width}}  {row['precision']:9.3f}  {row['recall']:6.3f}  "
            f"{row['f1-score']:5.3f}  {int(row['support']):7d}"
        )
    print(f"Trained {metrics['epochs_run']} epochs in {train_seconds:.0f} s; run folder {run_dir}")

    export_dir = export_model(model, config, data.class_names, metrics, data.preparation)
    (run_dir / "export_path.txt").write_text(f"{export_dir}\n")
    return TrainResult(model, metrics, run_dir, export_dir)


def main(argv: Sequence[str] | None = None) -> Path:
    parser = config_parser("python -m keras_blood.train", "Train, evaluate and export a model.")
    args = parser.parse_args(argv)
    config = load_config(args.config, args.overrides)
    result = train(config)
    print(result.export_dir)
    return result.export_dir


if __name__ == "__main__":
    sys.exit(run_main(main))
