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
from keras_blood.folders import new_folder

REQUIRED_SPLITS = ("train", "val", "test")


@dataclass
class TrainResult:
    model: Any  # the trained keras.Model, best validation weights
    metrics: dict[str, Any]  # test metrics, as written to metrics.json
    run_dir: Path
    export_dir: Path


def new_run_dir(config: Config) -> Path:
    """A fresh folder per run; an existing run is never written into."""
    return new_folder(config.output.runs_dir / config.name)


def model_input_shape(config: Config, image_shape: tuple[int, int, int]) -> tuple[int, int, int]:
    """What the model takes: the data's images, or their cell crops (DataConfig.model_size)."""
    return (*config.data.model_size, image_shape[-1])


def member_seeds(seed: int, count: int) -> list[int]:
    """Seeds for the members of an ensemble: the run's own, then ones drawn from
    ``(seed, member)`` by NumPy's SeedSequence. Not seed + 1, seed + 2: runs with
    seeds 0 and 1 would then share a member and their spread would look smaller."""
    import numpy as np

    return [seed] + [int(np.random.SeedSequence([seed, k]).generate_state(1)[0] >> 1) for k in range(1, count)]


def best_epoch_summary(history: dict[str, list[float]]) -> dict[str, Any]:
    """The epoch a checkpoint kept (lowest val_loss) and its validation figures."""
    best = min(range(len(history["val_loss"])), key=history["val_loss"].__getitem__)
    return {
        "epochs_run": len(history["loss"]),
        "best_epoch": best + 1,
        "best_val_loss": float(history["val_loss"][best]),
        "best_val_accuracy": float(history["val_accuracy"][best]),
    }


def make_learning_rate(config: Config, steps_per_epoch: int):
    """A float, or a schedule of the optimizer step."""
    import keras

    t = config.train
    learning_rate = t.learning_rate
    if t.schedule == "cosine":
        # Linear warm-up to the peak rate, then cosine decay to zero at the last step.
        warmup = t.warmup_epochs * steps_per_epoch
        learning_rate = keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=0.0 if warmup else t.learning_rate,
            decay_steps=max(1, t.epochs * steps_per_epoch - warmup),
            warmup_target=t.learning_rate if warmup else None,
            warmup_steps=warmup,
        )
    return learning_rate


def make_optimizer(config: Config, steps_per_epoch: int):
    import keras

    t = config.train
    kwargs = {"learning_rate": make_learning_rate(config, steps_per_epoch)}
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
    import tensorflow as tf

    from keras_blood.callbacks import ElapsedTime, ValidationTensorBoard
    from keras_blood.color import log_color_extraction, make_preprocess
    from keras_blood.data import load_data
    from keras_blood.data.augment import make_augment
    from keras_blood.data.pipeline import make_dataset
    from keras_blood.export import export_model
    from keras_blood.keras_metrics import validation_metrics
    from keras_blood.metrics import classification_metrics, per_class_table, summary_line
    from keras_blood.models import average_models, build_model, with_tta
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

    steps_per_epoch = math.ceil(len(data.splits["train"]) / config.train.batch_size)
    ensemble = config.train.ensemble
    seeds = member_seeds(config.seed, ensemble)

    def build(index: int):
        """Member ``index`` of the ensemble (0 for a single model), built and compiled."""
        if index:  # member 0 keeps the run's seed state
            seed_everything(seeds[index], config.train.deterministic)
        # The policy is global in Keras: set it for this model only, and put it back after.
        previous_policy = keras.mixed_precision.global_policy()
        if config.train.mixed_precision:
            keras.mixed_precision.set_global_policy("mixed_bfloat16")
        try:
            with strategy.scope():
                model = build_model(config.model, model_input_shape(config, data.image_shape), data.num_classes)
        finally:
            keras.mixed_precision.set_global_policy(previous_policy)
        if ensemble > 1:
            model.name = f"{model.name}_{index + 1}"  # names inside one ensemble must differ
        with strategy.scope():
            model.compile(
                optimizer=make_optimizer(config, steps_per_epoch),
                loss=keras.losses.CategoricalCrossentropy(label_smoothing=config.train.label_smoothing),
                # The validation views (ValidationTensorBoard) are read from these metrics.
                metrics=["accuracy", *validation_metrics(data.num_classes)],
                jit_compile=config.train.jit_compile,
            )
        return model

    first = build(0)  # before the run folder: a model that cannot be built leaves nothing
    first.summary(print_fn=lambda line, **_: print(line))

    run_dir = new_run_dir(config)
    save_config(config, run_dir / "config.yaml")
    print(f"Run folder: {run_dir}  (tensorboard --logdir {run_dir.parent})", flush=True)
    if config.data.color_extraction or config.data.cell_crop is not None:
        log_color_extraction(data.splits["train"], data.class_names, config.data, run_dir, config.seed)
    preprocess = make_preprocess(config.data)

    def pipeline(split: str, training: bool = False, seed: int = config.seed):
        return make_dataset(
            data.splits[split],
            data.num_classes,
            config.train.batch_size,
            training=training,
            seed=seed,
            shuffle_buffer=config.data.shuffle_buffer,
            augment=make_augment(config.augment) if training else None,
            preprocess=preprocess,
        )

    (run_dir / "checkpoints").mkdir()
    validation = pipeline("val")
    members, histories = [], []
    start = time.perf_counter()
    for index in range(ensemble):
        # A single model keeps the plain names; ensemble members get member-<n> ones.
        tag = f"member-{index + 1}" if ensemble > 1 else ""
        if tag:
            print(f"\nEnsemble member {index + 1} of {ensemble} (seed {seeds[index]})", flush=True)
        model = first if index == 0 else build(index)
        checkpoint = run_dir / "checkpoints" / f"{tag or 'best'}.weights.h5"
        history_csv = run_dir / (f"history-{tag}.csv" if tag else "history.csv")
        callbacks = [
            ElapsedTime(since=start),  # first: the callbacks after it see the key it adds
            # Keras's TensorBoard callback plus validation confusion matrix and PR curves.
            ValidationTensorBoard(run_dir / "logs" / tag, data.class_names),
            keras.callbacks.ModelCheckpoint(
                str(checkpoint), monitor="val_loss", save_best_only=True, save_weights_only=True
            ),
            keras.callbacks.CSVLogger(str(history_csv)),
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
        try:
            history = model.fit(
                pipeline("train", training=True, seed=seeds[index]),
                validation_data=validation,
                epochs=config.train.epochs,
                callbacks=callbacks,
                shuffle=False,  # the tf.data pipeline already shuffles, seeded
                # One line per epoch in logs and CI; a live bar in a terminal.
                verbose=1 if sys.stdout.isatty() else 2,
            ).history
        except KeyboardInterrupt:
            print(f"\nInterrupted. Logs and the best checkpoints so far are in {run_dir}", file=sys.stderr)
            raise
        if any(not math.isfinite(v) for v in history.get("loss", [])):
            raise KerasBloodError(
                f"training diverged (loss became NaN/inf at epoch {len(history['loss'])}); "
                f"lower train.learning_rate (now {config.train.learning_rate}). Logs: {run_dir}"
            )
        # Each member is its best epoch on validation, whichever callback stopped training.
        model.load_weights(str(checkpoint))
        members.append(model)
        histories.append(history)
    train_seconds = time.perf_counter() - start

    # Ensemble averaging and test-time augmentation (if any) are part of the evaluated
    # and the exported model alike.
    model = average_models(members)
    model_for_test = with_tta(model, config.eval.tta)
    how = [f"an ensemble of {ensemble}"] if ensemble > 1 else []
    how += [] if config.eval.tta == "none" else [f"{config.eval.tta} test-time augmentation"]
    print(f"Evaluating on the test split{' with ' + ' and '.join(how) if how else ''} ...", flush=True)
    test = data.splits["test"]
    probs = model_for_test.predict(pipeline("test"), verbose=0)
    metrics = classification_metrics(test.labels, probs, data.class_names)
    if model_for_test is not model:  # what test-time augmentation adds, measured
        plain = classification_metrics(test.labels, model.predict(pipeline("test"), verbose=0), data.class_names)
        metrics["without_tta"] = {k: plain[k] for k in ("accuracy", "f1_macro", "auc")}

    if ensemble == 1:
        metrics.update(best_epoch_summary(histories[0]))
    else:
        # What averaging adds, measured: each member alone, evaluated as the ensemble is.
        metrics["members"] = []
        for seed, member, history in zip(seeds, members, histories):
            alone_probs = with_tta(member, config.eval.tta).predict(pipeline("test"), verbose=0)
            alone = classification_metrics(test.labels, alone_probs, data.class_names)
            metrics["members"].append(
                {"seed": seed, **best_epoch_summary(history), "accuracy": alone["accuracy"], "auc": alone["auc"]}
            )
        # The ensemble's own validation figures (no TTA), as a single model reports its best epoch's.
        with strategy.scope():
            model.compile(
                loss=keras.losses.CategoricalCrossentropy(label_smoothing=config.train.label_smoothing),
                metrics=["accuracy"],
            )
        val_loss, val_accuracy = model.evaluate(validation, verbose=0)
        metrics.update(
            epochs_run=sum(len(h["loss"]) for h in histories),
            best_val_loss=float(val_loss),
            best_val_accuracy=float(val_accuracy),
        )
    metrics.update(split="test", train_seconds=round(train_seconds, 1), params=int(model.count_params()))
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    with tf.summary.create_file_writer(str(run_dir / "logs" / "test")).as_default():
        for key in ("accuracy", "precision_macro", "recall_macro", "f1_macro", "auc"):
            tf.summary.scalar(f"test/{key}", metrics[key], step=metrics["epochs_run"])
    plot_confusion_matrix(
        metrics["confusion_matrix"], data.class_names, run_dir / "confusion_matrix.png", config.name
    )
    plot_learning_curves(histories, run_dir / "learning_curves.png", config.name)

    print(f"\nTest ({config.name}): {summary_line(metrics)}")
    print(per_class_table(metrics))
    if ensemble > 1:
        for number, m in enumerate(metrics["members"], start=1):
            print(f"  member {number} alone: accuracy {m['accuracy']:.4f}, AUC {m['auc']:.4f}")
    print(f"Trained {metrics['epochs_run']} epochs in {train_seconds:.0f} s; run folder {run_dir}")

    export_dir = export_model(model_for_test, config, data.class_names, metrics, data.preparation)
    (run_dir / "export_path.txt").write_text(f"{export_dir}\n")
    return TrainResult(model_for_test, metrics, run_dir, export_dir)


def main(argv: Sequence[str] | None = None) -> Path:
    parser = config_parser("python -m keras_blood.train", "Train, evaluate and export a model.")
    args = parser.parse_args(argv)
    config = load_config(args.config, args.overrides)
    result = train(config)
    print(result.export_dir)
    return result.export_dir


if __name__ == "__main__":
    sys.exit(run_main(main))
