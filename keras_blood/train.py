"""Train, evaluate and export one experiment.

    python -m keras_blood.train configs/dropout03.yaml [--set train.epochs=3 ...]
    python -m keras_blood.train --resume runs/dropout03/20250101-120000
    python -m keras_blood.train --resume latest configs/dropout03.yaml [--set ...]

Writes a run folder (TensorBoard logs, CSV history, best checkpoint, test metrics and
plots) under ``output.runs_dir/<config name>/<timestamp>/`` and a SavedModel version
under ``output.export_dir/<output.name>/<version>/``. The last line printed is the path
of that version, or why none was published (``--no-export``, a smoke run ...).
``train`` is a short orchestrator over the phases below, each usable on
its own (the benchmarks and tests call them): load and check the data; build and compile
a model; fit one (ensemble) member; evaluate on test; write the run's artefacts; export.

The same command on every worker of a ``TF_CONFIG`` cluster trains data-parallel
(:mod:`keras_blood.distribute`); only the chief writes the run folder and exports.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from keras_blood.cli import add_overrides, run_main
from keras_blood.config import Config, load_config
from keras_blood.errors import ConfigError, DataError, KerasBloodError
from keras_blood.runs import (
    FINISHED,
    TRAINED,
    RunFolder,
    backed_up_epochs,
    first_difference,
    latest_unfinished,
    read_history,
    truncate_history,
)

REQUIRED_SPLITS = ("train", "val", "test")


@dataclass
class TrainResult:
    model: Any  # the evaluated keras.Model (best validation weights, TTA/ensemble inside)
    metrics: dict[str, Any]  # test metrics, as written to metrics.json
    run_dir: Path | None  # None on a worker that is not the chief
    export_dir: Path | None  # None: not published (output.publish, publish_if_better), or not the chief


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


# ----------------------------------------------------------------------------- phases


def load_checked_data(config: Config):
    """The data the config names, with every split training needs (DataError if not)."""
    from keras_blood.data import load_data

    data = load_data(config.data, config.seed)
    for split in REQUIRED_SPLITS:
        if split not in data.splits or len(data.splits[split]) == 0:
            raise DataError(f"data source {data.name!r} has no {split!r} examples")
    return data


def build(config: Config, input_shape: tuple[int, int, int], num_classes: int, strategy=None, member: int | None = None):
    """The configured model, built in ``strategy``'s scope under the run's precision policy.

    ``member``: this model's index in an ensemble; members get distinct names, which the
    averaged model needs.
    """
    import keras
    import tensorflow as tf

    from keras_blood.models import build_model

    # The policy is global in Keras: set it for this model only, and put it back after.
    previous_policy = keras.mixed_precision.global_policy()
    if config.train.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        with (strategy or tf.distribute.get_strategy()).scope():
            model = build_model(config.model, input_shape, num_classes)
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)
    if member is not None:
        model.name = f"{model.name}_{member + 1}"
    return model


def build_compiled(config: Config, input_shape, num_classes: int, steps_per_epoch: int, strategy=None, member=None):
    """:func:`build`, compiled as training uses it."""
    model = build(config, input_shape, num_classes, strategy, member)
    compile_for_training(model, config, num_classes, steps_per_epoch, strategy)
    return model


def compile_for_training(model, config: Config, num_classes: int, steps_per_epoch: int, strategy=None) -> None:
    import keras
    import tensorflow as tf

    from keras_blood.keras_metrics import validation_metrics

    with (strategy or tf.distribute.get_strategy()).scope():
        model.compile(
            optimizer=make_optimizer(config, steps_per_epoch),
            loss=keras.losses.CategoricalCrossentropy(label_smoothing=config.train.label_smoothing),
            # The validation views (ValidationTensorBoard) are read from these metrics.
            metrics=["accuracy", *validation_metrics(num_classes)],
            jit_compile=config.train.jit_compile,
        )


@dataclass
class Session:
    """What the phases of one training process share."""

    config: Config
    data: Any  # DataBundle
    strategy: Any  # tf.distribute.Strategy
    cluster: Any  # runtime.Cluster, None for a single process
    run: RunFolder | None  # None on a worker that is not the chief
    run_path: Path | None  # the run folder, also known to other workers when resuming
    preprocess: Any = None
    clock_start: float = 0.0  # perf_counter() at training minute 0 (earlier when resuming)
    first_model: Any = None  # member 0, built before the run folder exists
    transfer: Any = None  # transfer.Transfer: what model.weights puts into each member

    @property
    def record(self) -> RunFolder | None:
        """The run folder to read state from: the chief's own, or the one being resumed."""
        return self.run or (RunFolder(self.run_path) if self.run_path else None)

    @property
    def is_chief(self) -> bool:
        return self.cluster is None or self.cluster.is_chief

    @property
    def ensemble(self) -> int:
        return self.config.train.ensemble

    @property
    def seeds(self) -> list[int]:
        return member_seeds(self.config.seed, self.ensemble)

    @property
    def input_shape(self):
        return model_input_shape(self.config, self.data.image_shape)

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.data.splits["train"]) / self.config.train.batch_size)

    def pipeline(self, split: str, training: bool = False, seed: int | None = None):
        from keras_blood.data.augment import make_augment
        from keras_blood.data.pipeline import make_dataset

        return make_dataset(
            self.data.splits[split],
            self.data.num_classes,
            self.config.train.batch_size,
            training=training,
            seed=self.config.seed if seed is None else seed,
            shuffle_buffer=self.config.data.shuffle_buffer,
            augment=make_augment(self.config.augment) if training else None,
            preprocess=self.preprocess,
        )

    def build(self, member: int):
        """Member ``member`` (0 for a single model), built and compiled for training."""
        from keras_blood.distribute import make_fit_work
        from keras_blood.runtime import seed_everything

        if member == 0 and self.first_model is not None:
            model, self.first_model = self.first_model, None
            return model
        if member:  # member 0 keeps the run's seed state
            seed_everything(self.seeds[member], self.config.train.deterministic)
        model = build_compiled(
            self.config,
            self.input_shape,
            self.data.num_classes,
            self.steps_per_epoch,
            self.strategy,
            member if self.ensemble > 1 else None,
        )
        if self.transfer is not None:
            what = self.transfer.apply(model, self.data.class_names)
            if member == 0:
                print(what, flush=True)
        return make_fit_work(model, self.strategy)

    def restore(self, member: int):
        """Member ``member`` with its best checkpoint's weights, outside any strategy:
        what is evaluated and exported (on the chief alone in a cluster)."""
        model = build(self.config, self.input_shape, self.data.num_classes, member=member if self.ensemble > 1 else None)
        model.load_weights(str(self.run.checkpoint(RunFolder.tag(member, self.ensemble))))
        return model


def training_callbacks(session: Session, member: int, backup_dir: Path, history: dict[str, list[float]]):
    """Everything fit does besides stepping: logs, checkpoints, early stopping, backup.

    Only the chief writes files others read; every worker keeps a backup (its own temporary
    one where it is not the chief) and the same early-stopping state, so all stop together.
    """
    import keras

    from keras_blood.callbacks import ElapsedTime, ResumableEarlyStopping, ValidationTensorBoard

    config, run = session.config, session.run
    tag = RunFolder.tag(member, session.ensemble)
    callbacks: list[keras.callbacks.Callback] = [
        ElapsedTime(since=session.clock_start),  # first: later ones see its key
        # Keras's TensorBoard callback plus validation confusion matrix and PR curves. Every
        # worker reads the validation metrics (a collective op); only the chief writes.
        ValidationTensorBoard(
            run.logs_dir(tag) if run else backup_dir.parent / "logs", session.data.class_names, write=run is not None
        ),
    ]
    if run is not None:
        best_so_far = min(history["val_loss"]) if history.get("val_loss") else None
        callbacks += [
            keras.callbacks.ModelCheckpoint(
                str(run.checkpoint(tag)),
                monitor="val_loss",
                save_best_only=True,
                save_weights_only=True,
                initial_value_threshold=best_so_far,
            ),
            keras.callbacks.CSVLogger(str(run.history_csv(tag)), append=True),
        ]
    callbacks.append(keras.callbacks.TerminateOnNaN())
    if config.train.early_stopping_patience:
        callbacks.append(
            ResumableEarlyStopping(
                past=history.get("val_loss"), monitor="val_loss", patience=config.train.early_stopping_patience
            )
        )
    # Last: an epoch's CSV row and checkpoint are written before its backup, so a resumed
    # run never lacks a row for an epoch the backup holds (extra rows are cut on resume).
    callbacks.append(keras.callbacks.BackupAndRestore(str(backup_dir), delete_checkpoint=False))
    return callbacks


def fit_member(session: Session, member: int) -> dict[str, list[float]]:
    """Train one member to the end of its schedule (or early stop), continuing from its
    backup if a killed run left one. Returns its whole per-epoch history."""
    config, run, record = session.config, session.run, session.record
    tag = RunFolder.tag(member, session.ensemble)
    scratch = None
    if run is not None:
        backup_dir = run.backup_dir(tag)
        truncate_history(run.history_csv(tag), backed_up_epochs(backup_dir))
    else:
        # A worker that is not the chief backs up into a folder of its own (removed at the
        # end), starting from the chief's backup when the run is resumed.
        scratch = Path(tempfile.mkdtemp(prefix=f"keras-blood-{session.cluster.name}-"))
        backup_dir = scratch / "backup"
        if record is not None and record.backup_dir(tag).is_dir():
            shutil.copytree(record.backup_dir(tag), backup_dir)
    history = read_history(record.history_csv(tag)) if record else {}
    history = {key: values[: backed_up_epochs(backup_dir)] for key, values in history.items()}

    if history:
        print(f"Resuming {tag or 'training'} after epoch {len(history['loss'])}", flush=True)
        if schedule_done(history, config):  # killed between its last epoch and its record
            if scratch is not None:
                shutil.rmtree(scratch, ignore_errors=True)
            return history if run is not None else {}
    from keras_blood.transfer import set_trainable, training_stages

    model = session.build(member)
    training = _training_data(session, member)
    try:
        for stage in training_stages(config, model, session.transfer, backup_dir):
            if stage.trainable is not None:  # train.transfer_schedule: other layers, another optimizer
                set_trainable(stage.trainable)
                compile_for_training(model, stage.config, session.data.num_classes, session.steps_per_epoch, session.strategy)
                trainable = sum(int(math.prod(w.shape)) for w in model.trainable_weights)
                print(f"{stage.title}; {trainable:,} trainable parameters", flush=True)
            fitted = model.fit(
                training.data,
                steps_per_epoch=training.steps,
                validation_data=training.validation,
                initial_epoch=len(history.get("loss", [])),  # the backup's, when there is one
                epochs=stage.epochs,
                callbacks=training_callbacks(session, member, stage.backup_dir, history),
                # One line per epoch in logs and CI; a live bar in a terminal.
                verbose=1 if sys.stdout.isatty() else 2,
                shuffle=False,  # the tf.data pipeline already shuffles, seeded
            )
            # What the next stage's callbacks start from, the same on every worker.
            history = {key: history.get(key, []) + values for key, values in fitted.history.items()}
    except KeyboardInterrupt:
        where = session.run_path or "the chief's run folder"
        print(f"\nInterrupted. Continue with: python -m keras_blood.train --resume {where}", file=sys.stderr)
        raise
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)

    from keras_blood.distribute import weights_fingerprint

    # Equal on every worker of a cluster: the gradients were synchronised.
    who = f"{session.cluster.name}: " if session.cluster else ""
    print(f"{who}{tag or 'model'} trained; weights fingerprint {weights_fingerprint(model)}", flush=True)
    if run is None:
        return {}
    history = read_history(run.history_csv(tag))
    if not history or any(not math.isfinite(v) for v in history["loss"]):
        raise KerasBloodError(
            f"training diverged (loss became NaN/inf at epoch {len(history.get('loss', []))}); "
            f"lower train.learning_rate (now {config.train.learning_rate}). Logs: {run.path}"
        )
    return history


def schedule_done(history: dict[str, list[float]], config: Config) -> bool:
    """Whether a member's recorded epochs already end its training: all epochs run, or
    early stopping's patience used up."""
    val_loss, patience = history.get("val_loss", []), config.train.early_stopping_patience
    if len(val_loss) >= config.train.epochs:
        return True
    best = min(range(len(val_loss)), key=val_loss.__getitem__) if val_loss else 0
    return bool(patience and val_loss and len(val_loss) - 1 - best >= patience)


@dataclass
class _TrainingData:
    data: Any
    steps: int | None
    validation: Any


def _training_data(session: Session, member: int) -> _TrainingData:
    """Single process: the seeded pipeline, one pass an epoch. A cluster: each worker its
    own shard, repeated, the same number of steps on all (keras_blood.distribute)."""
    from keras_blood import distribute

    seed = session.seeds[member]
    if not distribute.is_multi_worker(session.strategy):
        return _TrainingData(session.pipeline("train", training=True, seed=seed), None, session.pipeline("val"))
    from keras_blood.data.augment import make_augment
    from keras_blood.data.pipeline import make_dataset

    train = session.data.splits["train"]

    def make_shard(shard: int, num_shards: int, batch: int):
        own = train.take(distribute.shard_indices(len(train), shard, num_shards))
        return make_dataset(
            own,
            session.data.num_classes,
            batch,
            training=True,
            seed=seed + shard,
            shuffle_buffer=session.config.data.shuffle_buffer,
            augment=make_augment(session.config.augment),
            preprocess=session.preprocess,
        ).repeat()

    global_batch = session.config.train.batch_size
    return _TrainingData(
        distribute.distribute_training_data(session.strategy, make_shard, global_batch),
        distribute.steps_per_epoch(len(train), global_batch),
        distribute.shard_validation_data(session.pipeline("val")),
    )


def evaluate_on_test(session: Session, members: list, histories: list[dict[str, list[float]]]):
    """The exported model (ensemble average, TTA and calibration inside), its test metrics
    with what TTA and averaging each add, measured, and its test probabilities (named;
    before calibration too) for the reliability diagram."""
    import keras

    from keras_blood.metrics import classification_metrics
    from keras_blood.models import average_models, with_tta

    config, data = session.config, session.data
    model = average_models(members)
    model_for_test = with_tta(model, config.eval.tta)
    how = [f"an ensemble of {len(members)}"] if len(members) > 1 else []
    how += [] if config.eval.tta == "none" else [f"{config.eval.tta} test-time augmentation"]
    print(f"Evaluating on the test split{' with ' + ' and '.join(how) if how else ''} ...", flush=True)
    test = data.splits["test"]

    def score(m):
        return classification_metrics(test.labels, m.predict(session.pipeline("test"), verbose=0), data.class_names)

    probs = model_for_test.predict(session.pipeline("test"), verbose=0)
    curves = {"model": probs}
    exported, calibration = model_for_test, None
    if config.eval.calibration == "temperature":
        exported, calibration, probs = calibrate(session, model_for_test, probs)
        curves = {"uncalibrated": curves["model"], f"temperature {calibration['temperature']:.3f}": probs}
    metrics = classification_metrics(test.labels, probs, data.class_names)
    if calibration:
        metrics["calibration"] = calibration
    if model_for_test is not model:
        plain = score(model)
        metrics["without_tta"] = {k: plain[k] for k in ("accuracy", "f1_macro", "auc")}
    if len(members) == 1:
        metrics.update(best_epoch_summary(histories[0]))
    else:
        metrics["members"] = []
        for seed, member, history in zip(session.seeds, members, histories):
            alone = score(with_tta(member, config.eval.tta))
            metrics["members"].append(
                {"seed": seed, **best_epoch_summary(history), "accuracy": alone["accuracy"], "auc": alone["auc"]}
            )
        # The ensemble's own validation figures (no TTA), as a single model reports its best epoch's.
        model.compile(
            loss=keras.losses.CategoricalCrossentropy(label_smoothing=config.train.label_smoothing),
            metrics=["accuracy"],
        )
        val_loss, val_accuracy = model.evaluate(session.pipeline("val"), verbose=0)
        metrics.update(
            epochs_run=sum(len(h["loss"]) for h in histories),
            best_val_loss=float(val_loss),
            best_val_accuracy=float(val_accuracy),
        )
    metrics.update(split="test", params=int(model.count_params()))
    return exported, metrics, curves


def calibrate(session: Session, model, test_probs):
    """eval.calibration = temperature: T fitted on the validation split and folded into the
    model. Returns that model, the record for metrics.json (T; accuracy, ECE, Brier and NLL
    before and after, on validation and test) and its test probabilities."""
    import keras
    import numpy as np

    from keras_blood.calibration import fit_temperature, with_temperature
    from keras_blood.metrics import calibration_metrics

    splits = session.data.splits
    val_probs = model.predict(session.pipeline("val"), verbose=0)
    temperature = fit_temperature(splits["val"].labels, val_probs)
    calibrated = with_temperature(model, temperature)
    scale = calibrated.get_layer("probabilities")  # the exported layer, on what was predicted
    after = {split: keras.ops.convert_to_numpy(scale(p)) for split, p in (("val", val_probs), ("test", test_probs))}
    record: dict[str, Any] = {"method": "temperature", "temperature": temperature, "fitted_on": "val"}
    for split, before in (("val", val_probs), ("test", test_probs)):
        labels = np.asarray(splits[split].labels).reshape(-1)
        record[split] = {
            name: {"accuracy": float(np.mean(p.argmax(1) == labels)), **calibration_metrics(labels, p)}
            for name, p in (("before", before), ("after", after[split]))
        }
    test = record["test"]
    print(
        f"Temperature {temperature:.4f} (fitted on val): test ECE {test['before']['ece']:.4f} -> "
        f"{test['after']['ece']:.4f}, NLL {test['before']['nll']:.4f} -> {test['after']['nll']:.4f}",
        flush=True,
    )
    return calibrated, record, after["test"]


def write_run_artefacts(
    session: Session, metrics: dict[str, Any], histories: list[dict[str, list[float]]], curves: dict[str, Any]
) -> None:
    """metrics.json, the test scalars for TensorBoard, and the figures (``curves``: named
    test probabilities for the reliability diagram)."""
    import tensorflow as tf

    from keras_blood.metrics import per_class_table, summary_line
    from keras_blood.plots import plot_confusion_matrix, plot_learning_curves, plot_reliability_diagram

    config, run = session.config, session.run
    (run.path / "metrics.json").write_text(json.dumps(metrics, indent=2))
    with tf.summary.create_file_writer(str(run.path / "logs" / "test")).as_default():
        for key in ("accuracy", "precision_macro", "recall_macro", "f1_macro", "auc"):
            tf.summary.scalar(f"test/{key}", metrics[key], step=metrics["epochs_run"])
    plot_confusion_matrix(metrics["confusion_matrix"], session.data.class_names, run.path / "confusion_matrix.png", config.name)
    plot_learning_curves(histories, run.path / "learning_curves.png", config.name)
    plot_reliability_diagram(session.data.splits["test"].labels, curves, run.path / "reliability.png", config.name)

    print(f"\nTest ({config.name}): {summary_line(metrics)}")
    print(per_class_table(metrics))
    for number, m in enumerate(metrics.get("members", []), start=1):
        print(f"  member {number} alone: accuracy {m['accuracy']:.4f}, AUC {m['auc']:.4f}")
    print(f"Trained {metrics['epochs_run']} epochs in {metrics['train_seconds']:.0f} s; run folder {run.path}")


def export(session: Session, model, metrics: dict[str, Any]) -> Path | None:
    """Publish the evaluated model as a new version (or say why not). The run records the
    outcome and the version records its run, so a resumed run never publishes twice."""
    from keras_blood.export import NotPublished, export_model, find_run_version

    run = session.run
    version = find_run_version(session.config, run.path)  # published before a kill
    if version is None:
        try:
            version = export_model(
                model, session.config, session.data.class_names, metrics, session.data.preparation, run=run.path
            )
        except NotPublished as declined:
            print(f"Not published: {declined}", flush=True)
            run.update_status(state=FINISHED, export=None, not_published=str(declined))
            return None
    (run.path / "export_path.txt").write_text(f"{version}\n")
    run.update_status(state=FINISHED, export=str(version))
    return version


# ----------------------------------------------------------------------------- the run


def train(config: Config, resume: str | Path | None = None) -> TrainResult:
    """Run the whole experiment: train, evaluate on the test split, export.

    ``resume``: a run folder of this config to continue where it stopped.
    """
    from keras_blood.distribute import barrier
    from keras_blood.runtime import cluster_from_env, describe_devices, seed_everything, select_strategy

    cluster = cluster_from_env()  # before TensorFlow starts: it must know the cluster first
    strategy = select_strategy(config.train.distribute, cluster)
    print(f"Device: {describe_devices(strategy, cluster)}", flush=True)

    # Everything that can fail on user input happens before a run folder exists; a weights
    # source that is not one fails even before the data is read (or prepared).
    from keras_blood.transfer import prepare_transfer

    transfer = prepare_transfer(config)
    data = load_checked_data(config)
    # Seeded after the data is read: reading a TFDS copy draws from the global generators,
    # and a seeded run must start from the same weights whether its copy was there or not.
    seed_everything(config.seed, config.train.deterministic)
    sizes = ", ".join(f"{k} {len(v)}" for k, v in data.splits.items())
    print(f"Data: {data.name} {data.image_shape}, {data.num_classes} classes; {sizes}", flush=True)
    session = Session(config, data, strategy, cluster, run=None, run_path=Path(resume) if resume else None)
    is_chief = session.is_chief
    if is_chief:  # the target of the export: writable, and the same signature as its versions
        from keras_blood.export import check_export_target

        check_export_target(config, data.class_names, data.image_shape)
    # Before the run folder: a model that cannot be built, or weights that do not fit, leave nothing.
    session.transfer = transfer
    session.first_model = session.build(0)
    if is_chief:
        session.first_model.summary(print_fn=lambda line, **_: print(line))
        session.run = RunFolder.open(Path(resume)) if resume else RunFolder.create(config)
        session.run_path = session.run.path
        print(f"Run folder: {session.run.path}  (tensorboard --logdir {session.run.path.parent})", flush=True)
        if not resume and (config.data.color_extraction or config.data.cell_crop is not None):
            from keras_blood.plots import log_color_extraction

            log_color_extraction(data.splits["train"], data.class_names, config.data, session.run.path, config.seed)
    from keras_blood.segmentation import make_preprocess

    session.preprocess = make_preprocess(config.data)
    record = session.record
    status = record.status() if record else {"members_done": 0}
    # Training minutes continue across a resume: the clock starts where the record ends.
    previous = [read_history(record.history_csv(RunFolder.tag(k, session.ensemble))) for k in range(session.ensemble)] if record else []
    elapsed = max((h["elapsed_minutes"][-1] for h in previous if h.get("elapsed_minutes")), default=0.0)
    session.clock_start = time.perf_counter() - 60 * elapsed

    histories = []
    for member in range(session.ensemble):
        tag = RunFolder.tag(member, session.ensemble)
        if member < status["members_done"]:
            histories.append(previous[member])
            continue
        if session.ensemble > 1:
            print(f"\nEnsemble member {member + 1} of {session.ensemble} (seed {session.seeds[member]})", flush=True)
        histories.append(fit_member(session, member))
        if session.run is not None:
            session.run.update_status(members_done=member + 1, **({"state": TRAINED} if member + 1 == session.ensemble else {}))
            session.run.drop_backup(tag)
    train_seconds = time.perf_counter() - session.clock_start

    if not is_chief:
        print(f"{cluster.name}: training finished; waiting for the chief to evaluate and export", flush=True)
        barrier(strategy)
        return TrainResult(None, {}, None, None)

    members = [session.restore(member) for member in range(session.ensemble)]
    model, metrics, curves = evaluate_on_test(session, members, histories)
    metrics["train_seconds"] = round(train_seconds, 1)
    if session.transfer is not None:  # where the weights came from; the version's metrics.json has it too
        metrics["transfer"] = session.transfer.record
    write_run_artefacts(session, metrics, histories, curves)
    version = export(session, model, metrics)
    barrier(strategy)
    return TrainResult(model, metrics, session.run.path, version)


def resolve_resume(resume: str, config_path: str | None, overrides: list[str]) -> tuple[Config, RunFolder]:
    """``--resume RUN_DIR`` or ``--resume latest CONFIG``: the run to continue and its config."""
    if resume != "latest":
        if config_path or overrides:
            raise ConfigError(
                f"--resume {resume}: the run's own config.yaml is used; drop the CONFIG/--set "
                "arguments (or use --resume latest CONFIG to find the run from a config)"
            )
        run = RunFolder.open(Path(resume))
        return run.config, run
    if not config_path:
        raise ConfigError("--resume latest needs the CONFIG whose newest unfinished run to continue")
    config = load_config(config_path, overrides)
    run = latest_unfinished(config)
    if run is None:
        raise ConfigError(
            f"--resume latest: no unfinished run of {config.name!r} under {config.output.runs_dir / config.name}; "
            f"start one with: python -m keras_blood.train {config_path}"
        )
    difference = first_difference(run.config.to_dict(), config.to_dict())
    if difference:
        raise ConfigError(f"--resume latest: {run.path} was started with other settings: {difference}")
    return run.config, run


def main(argv: Sequence[str] | None = None) -> Path | None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m keras_blood.train", description="Train, evaluate and export a model.")
    parser.add_argument("config", nargs="?", help="YAML experiment config, e.g. configs/dropout03.yaml")
    parser.add_argument("--no-export", action="store_true", help="publish no version (output.publish=never)")
    parser.add_argument(
        "--resume",
        metavar="RUN_DIR|latest",
        help="continue a killed run from its last finished epoch: its folder, or `latest` "
        "(with CONFIG) for the config's newest unfinished run",
    )
    add_overrides(parser)
    args = parser.parse_args(argv)
    if args.resume:
        if args.no_export:
            raise ConfigError("--no-export with --resume: a run keeps the publishing settings it started with")
        config, run = resolve_resume(args.resume, args.config, args.overrides)
        if run.finished:
            status = run.status()
            outcome = f"exported as {status['export']}" if status.get("export") else f"not published: {status.get('not_published')}"
            print(f"{run.path} finished already; {outcome}", flush=True)
            return Path(status["export"]) if status.get("export") else None
        result = train(config, resume=run.path)
    else:
        if not args.config:
            parser.error("give a CONFIG, or --resume RUN_DIR")
        result = train(load_config(args.config, args.overrides + ["output.publish=never"] * args.no_export))
    if result.export_dir is not None:
        print(result.export_dir)
    return result.export_dir


if __name__ == "__main__":
    sys.exit(run_main(main))
