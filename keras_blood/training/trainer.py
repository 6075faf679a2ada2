"""The trainer: runs a :class:`~keras_blood.training.task.Task` to a tested, exported model.

It owns what a run's state decides: the run folder and ``--resume`` (a killed run continues
from its last finished epoch), the chief and worker roles of a ``TF_CONFIG`` cluster (only
the chief writes the run folder and exports), ensemble members one after another, and the
stages of ``train.transfer_schedule``.
"""

from __future__ import annotations

import math
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf

from keras_blood.config.schema import Config
from keras_blood.errors import KerasBloodError
from keras_blood.evaluation.plots import log_color_extraction, plot_learning_curves
from keras_blood.evaluation.report import write_report
from keras_blood.serving.publish import check_export_target
from keras_blood.training.callbacks import ElapsedTime, ResumableEarlyStopping, ValidationTensorBoard
from keras_blood.training.distribute import barrier, weights_fingerprint
from keras_blood.training.runs import (
    TRAINED,
    RunFolder,
    backed_up_epochs,
    read_history,
    truncate_history,
)
from keras_blood.training.runtime import cluster_from_env, describe_devices, select_strategy
from keras_blood.training.task import Task
from keras_blood.training.transfer import set_trainable, training_stages


@dataclass
class TrainResult:
    model: Any  # the evaluated keras.Model (best validation weights, TTA/ensemble inside)
    metrics: dict[str, Any]  # test metrics, as written to metrics.json
    run_dir: Path | None  # None on a worker that is not the chief
    export_dir: Path | None  # None: not published (output.publish, publish_if_better), or not the chief


def schedule_done(history: dict[str, list[float]], config: Config) -> bool:
    """Whether a member's recorded epochs already end its training: all epochs run, or
    early stopping's patience used up."""
    val_loss, patience = history.get("val_loss", []), config.train.early_stopping_patience
    if len(val_loss) >= config.train.epochs:
        return True
    best = min(range(len(val_loss)), key=val_loss.__getitem__) if val_loss else 0
    return bool(patience and val_loss and len(val_loss) - 1 - best >= patience)


class Trainer:
    """Trains ``task``'s members in a new run folder, or continues the run at ``resume``."""

    def __init__(self, task: Task, resume: Path | None = None):
        self.task = task
        self.resume = Path(resume) if resume else None
        self.run: RunFolder | None = None  # the chief's run folder, once created or opened
        self.clock_start = 0.0  # perf_counter() at training minute 0 (earlier when resuming)

    @property
    def record(self) -> RunFolder | None:
        """The run folder to read state from: the chief's own, or the one being resumed."""
        return self.run or (RunFolder(self.resume) if self.resume else None)

    # ------------------------------------------------------------------ the run

    def fit(self) -> TrainResult:
        task, config = self.task, self.task.config
        if task.is_chief:  # the target of the export: writable, and the same signature as its versions
            check_export_target(config, task.data.class_names, task.data.image_shape)
        # Before the run folder: a model that cannot be built, or weights that do not fit, leave nothing.
        first_model = task.build_member(0)
        if task.is_chief:
            first_model.summary(print_fn=lambda line, **_: print(line))
            self.run = RunFolder.open(self.resume) if self.resume else RunFolder.create(config)
            print(f"Run folder: {self.run.path}  (tensorboard --logdir {self.run.path.parent})", flush=True)
            if not self.resume and (config.data.color_extraction or config.data.cell_crop is not None):
                log_color_extraction(task.data.splits["train"], task.data.class_names, config.data, self.run.path, config.seed)
        record = self.record
        status = record.status() if record else {"members_done": 0}
        # Training minutes continue across a resume: the clock starts where the record ends.
        previous = [read_history(record.history_csv(RunFolder.tag(k, task.ensemble))) for k in range(task.ensemble)] if record else []
        elapsed = max((h["elapsed_minutes"][-1] for h in previous if h.get("elapsed_minutes")), default=0.0)
        self.clock_start = time.perf_counter() - 60 * elapsed

        histories = []
        for member in range(task.ensemble):
            tag = RunFolder.tag(member, task.ensemble)
            if member < status["members_done"]:
                histories.append(previous[member])
                continue
            if task.ensemble > 1:
                print(f"\nEnsemble member {member + 1} of {task.ensemble} (seed {task.seeds[member]})", flush=True)
            histories.append(self.fit_member(member, first_model if member == 0 else None))
            if self.run is not None:
                self.run.update_status(members_done=member + 1, **({"state": TRAINED} if member + 1 == task.ensemble else {}))
                self.run.drop_backup(tag)
        train_seconds = time.perf_counter() - self.clock_start

        if not task.is_chief:
            print(f"{task.cluster.name}: training finished; waiting for the chief to evaluate and export", flush=True)
            barrier(task.strategy)
            return TrainResult(None, {}, None, None)

        members = [task.restore(member, self.run) for member in range(task.ensemble)]
        model, metrics, curves = task.evaluate(members, histories)
        metrics["train_seconds"] = round(train_seconds, 1)
        if task.transfer is not None:  # where the weights came from; the version's metrics.json has it too
            metrics["transfer"] = task.transfer.record
        self.write_run_report(metrics, histories, curves)
        version = task.export(model, metrics, self.run)
        barrier(task.strategy)
        return TrainResult(model, metrics, self.run.path, version)

    # ------------------------------------------------------------------ one member

    def callbacks(self, member: int, backup_dir: Path, history: dict[str, list[float]]) -> list[keras.callbacks.Callback]:
        """Everything fit does besides stepping: logs, checkpoints, early stopping, backup.

        Only the chief writes files others read; every worker keeps a backup (its own temporary
        one where it is not the chief) and the same early-stopping state, so all stop together.
        """
        config, run = self.task.config, self.run
        tag = RunFolder.tag(member, self.task.ensemble)
        callbacks: list[keras.callbacks.Callback] = [
            ElapsedTime(since=self.clock_start),  # first: later ones see its key
            # Keras's TensorBoard callback plus validation confusion matrix and PR curves. Every
            # worker reads the validation metrics (a collective op); only the chief writes.
            ValidationTensorBoard(
                run.logs_dir(tag) if run else backup_dir.parent / "logs", self.task.data.class_names, write=run is not None
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

    def fit_member(self, member: int, model: keras.Model | None = None) -> dict[str, list[float]]:
        """Train one member to the end of its schedule (or early stop), continuing from its
        backup if a killed run left one. Returns its whole per-epoch history. ``model``: the
        member already built (member 0 is built before the run folder exists)."""
        task, config, run, record = self.task, self.task.config, self.run, self.record
        tag = RunFolder.tag(member, task.ensemble)
        scratch = None
        if run is not None:
            backup_dir = run.backup_dir(tag)
            truncate_history(run.history_csv(tag), backed_up_epochs(backup_dir))
        else:
            # A worker that is not the chief backs up into a folder of its own (removed at the
            # end), starting from the chief's backup when the run is resumed.
            scratch = Path(tempfile.mkdtemp(prefix=f"keras-blood-{task.cluster.name}-"))
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

        model = model or task.build_member(member)
        training = task.build_training_inputs(member)
        try:
            for stage in training_stages(config, model, task.transfer, backup_dir):
                if stage.trainable is not None:  # train.transfer_schedule: other layers, another optimizer
                    set_trainable(stage.trainable)
                    task.compile(model, stage.config)
                    trainable = sum(int(math.prod(w.shape)) for w in model.trainable_weights)
                    print(f"{stage.title}; {trainable:,} trainable parameters", flush=True)
                fitted = model.fit(
                    training.data,
                    steps_per_epoch=training.steps,
                    validation_data=training.validation,
                    initial_epoch=len(history.get("loss", [])),  # the backup's, when there is one
                    epochs=stage.epochs,
                    callbacks=self.callbacks(member, stage.backup_dir, history),
                    # One line per epoch in logs and CI; a live bar in a terminal.
                    verbose=1 if sys.stdout.isatty() else 2,
                    shuffle=False,  # the tf.data pipeline already shuffles, seeded
                )
                # What the next stage's callbacks start from, the same on every worker.
                history = {key: history.get(key, []) + values for key, values in fitted.history.items()}
        except KeyboardInterrupt:
            where = (run.path if run else self.resume) or "the chief's run folder"
            print(f"\nInterrupted. Continue with: python -m keras_blood.train --resume {where}", file=sys.stderr)
            raise
        finally:
            if scratch is not None:
                shutil.rmtree(scratch, ignore_errors=True)

        # Equal on every worker of a cluster: the gradients were synchronised.
        who = f"{task.cluster.name}: " if task.cluster else ""
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

    # ------------------------------------------------------------------ the record

    def write_run_report(self, metrics: dict[str, Any], histories: list[dict[str, list[float]]], curves: dict[str, Any]) -> None:
        """The test report (:func:`keras_blood.evaluation.report.write_report`), the test
        scalars for TensorBoard and the learning curves."""
        config, run, data = self.task.config, self.run, self.task.data
        with tf.summary.create_file_writer(str(run.path / "logs" / "test")).as_default():
            for key in ("accuracy", "precision_macro", "recall_macro", "f1_macro", "auc"):
                tf.summary.scalar(f"test/{key}", metrics[key], step=metrics["epochs_run"])
        plot_learning_curves(histories, run.path / "learning_curves.png", config.name)
        write_report(run.path, metrics, data.splits["test"].labels, curves, data.class_names, config.name, f"Test ({config.name})")
        for number, m in enumerate(metrics.get("members", []), start=1):
            print(f"  member {number} alone: accuracy {m['accuracy']:.4f}, AUC {m['auc']:.4f}")
        print(f"Trained {metrics['epochs_run']} epochs in {metrics['train_seconds']:.0f} s; run folder {run.path}")


def train(config: Config, resume: str | Path | None = None) -> TrainResult:
    """Run the whole experiment: train, evaluate on the test split, export.

    ``resume``: a run folder of this config to continue where it stopped. The same call on
    every worker of a ``TF_CONFIG`` cluster trains data-parallel.
    """
    cluster = cluster_from_env()  # before TensorFlow starts: it must know the cluster first
    strategy = select_strategy(config.train.distribute, cluster)
    print(f"Device: {describe_devices(strategy, cluster)}", flush=True)
    # Everything that can fail on user input happens before a run folder exists.
    task = Task.from_config(config, strategy, cluster)
    sizes = ", ".join(f"{k} {len(v)}" for k, v in task.data.splits.items())
    print(f"Data: {task.data.name} {task.data.image_shape}, {task.data.num_classes} classes; {sizes}", flush=True)
    return Trainer(task, resume).fit()


