"""The trainer: runs a :class:`~keras_blood.training.task.Task` to a tested, exported model.

It owns what a run's state decides: the run folder and ``--resume`` (a killed run continues
from its last finished epoch), the chief and worker roles of a ``TF_CONFIG`` cluster (only
the chief writes the run folder and exports), ensemble members one after another, and the
stages of ``train.transfer_schedule``.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf

from keras_blood.config.schema import Config
from keras_blood.data.split_record import split_record
from keras_blood.errors import KerasBloodError
from keras_blood.evaluation.plots import log_color_extraction, plot_learning_curves
from keras_blood.evaluation.report import NO_VALIDATION, write_report
from keras_blood.files import out_of_space, require_free_space
from keras_blood.serving.publish import check_publish_target
from keras_blood.training.backups import member_backup, restore_checkpoint, state_bytes
from keras_blood.training.callbacks import (
    BestCheckpoint,
    ElapsedTime,
    EpochBackup,
    ResumableEarlyStopping,
    ValidationTensorBoard,
    variables_bytes,
)
from keras_blood.training.distribute import barrier, weights_fingerprint
from keras_blood.training.history import best_value, read_history, truncate_history
from keras_blood.training.resume import check_resumed_data
from keras_blood.training.runs import TRAINED, RunError, RunFolder, check_run_target, existing_folder
from keras_blood.training.runtime import cluster_from_env, describe_devices, select_strategy
from keras_blood.training.signals import StopAtSafePoint, Stopped, StopRequest, stop_on_sigterm
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
    val_loss, patience = history.get(config.selection_key, []), config.train.early_stopping_patience
    if max(map(len, history.values()), default=0) >= config.train.epochs:  # without validation too
        return True
    best = min(range(len(val_loss)), key=val_loss.__getitem__) if val_loss else 0
    return bool(patience and val_loss and len(val_loss) - 1 - best >= patience)


class Trainer:
    """Trains ``task``'s members in a new run folder, or continues the run at ``resume``."""

    def __init__(self, task: Task, resume: Path | None = None, data_split: dict[str, Any] | None = None):
        self.task = task
        self.resume = Path(resume) if resume else None
        self.data_split = data_split  # what a new run folder records it trains on
        self.run: RunFolder | None = None  # the chief's run folder, once created or opened
        self.best: BestCheckpoint | None = None  # the chief's, for the member being trained
        self.stop: StopRequest | None = None  # SIGTERM's, where this process handles it
        self.clock_start = 0.0  # perf_counter() at training minute 0 (earlier when resuming)

    @property
    def record(self) -> RunFolder | None:
        """The run folder to read state from: the chief's own, or the one being resumed."""
        return self.run or (RunFolder(self.resume) if self.resume else None)

    # ------------------------------------------------------------------ the run

    def fit(self) -> TrainResult:
        task, config = self.task, self.task.config
        if task.is_chief:  # the target of the export: writable, and the same signature as its versions
            check_publish_target(config, task.data.class_names, task.data.image_shape)
        # Before the run folder: a model that cannot be built, or weights that do not fit, leave nothing.
        first_model = task.build_member(0)
        if task.is_chief:
            first_model.summary(print_fn=lambda line, **_: print(line))
            self.check_space(first_model)
            self.run = RunFolder.open(self.resume) if self.resume else RunFolder.create(config, self.data_split)
            print(f"Run folder: {self.run.path}  (tensorboard --logdir {self.run.path.parent})", flush=True)
            if task.selection_key is None:
                print(f"No early stopping; the weights kept are those of {NO_VALIDATION}", flush=True)
            if not self.resume and (config.data.color_extraction or config.data.cell_crop is not None):
                log_color_extraction(
                    task.data.splits["train"], task.data.class_names, config.data, self.run.path, config.seed
                )
        record = self.record
        status = record.status() if record else {"members_done": 0}
        # Training minutes continue across a resume: the clock starts where the record ends.
        previous = (
            [read_history(record.history_csv(RunFolder.tag(k, task.ensemble))) for k in range(task.ensemble)]
            if record
            else []
        )
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
                self.run.update_status(
                    members_done=member + 1, **({"state": TRAINED} if member + 1 == task.ensemble else {})
                )
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
        version = task.publish(model, metrics, self.run)
        barrier(task.strategy)
        return TrainResult(model, metrics, self.run.path, version)

    def check_space(self, model: keras.Model) -> None:
        """Before the run folder: room for the backups and checkpoints training writes (the
        best checkpoint, the last epoch's backup and the next one's, and a checkpoint for
        each other member), so a disk too small says so now, not after the first epoch."""
        config = self.task.config
        state = state_bytes(variables_bytes(model))
        if self.resume:
            with contextlib.suppress(OSError, ValueError, KeyError):
                if RunFolder(self.resume).status()["members_done"] >= self.task.ensemble:
                    return  # trained: evaluation and export write no backups
            folder, copies = self.resume, 3
            fix = f"free space there, then: python -m keras_blood.train --resume {self.resume}"
        else:
            folder, copies = existing_folder(config.output.runs_dir), self.task.ensemble + 2
            fix = (
                "free space there or --set output.runs_dir=<a folder with room> "
                f"(output.runs_dir is {str(config.output.runs_dir)!r})"
            )
        require_free_space(folder, copies * state, f"training {config.name!r} (backups and checkpoints)", fix)

    # ------------------------------------------------------------------ one member

    def callbacks(
        self, member: int, backup_dir: Path, history: dict[str, list[float]]
    ) -> list[keras.callbacks.Callback]:
        """Everything fit does besides stepping: logs, checkpoints, early stopping, backup.

        Only the chief writes files others read; every worker keeps a backup (its own temporary
        one where it is not the chief) and the same early-stopping state, so all stop together.
        """
        config, run = self.task.config, self.run
        tag = RunFolder.tag(member, self.task.ensemble)
        callbacks: list[keras.callbacks.Callback] = [
            ElapsedTime(since=self.clock_start),  # first: later ones see its key
            *self.task.source_validation(),  # before the ones that read its keys
            # Keras's TensorBoard callback plus validation confusion matrix and PR curves. Every
            # worker reads the validation metrics (a collective op); only the chief writes.
            ValidationTensorBoard(
                run.logs_dir(tag) if run else backup_dir.parent / "logs",
                self.task.data.class_names,
                write=run is not None,
            ),
        ]
        if run is not None:
            callbacks.append(keras.callbacks.CSVLogger(str(run.history_csv(tag)), append=True))
        callbacks.append(keras.callbacks.TerminateOnNaN())
        key = self.task.selection_key  # None without a validation split (no early stopping then: Config)
        if config.train.early_stopping_patience and key is not None:
            callbacks.append(
                ResumableEarlyStopping(
                    past=history.get(key), monitor=key, patience=config.train.early_stopping_patience
                )
            )
        # Last: an epoch's CSV row is written before its backup commits it, so a resumed run
        # never lacks a row for an epoch the backup holds (extra rows are cut on resume); the
        # best checkpoint is published after the commit, so it never holds an uncommitted epoch.
        callbacks.append(EpochBackup(backup_dir, self.best if run is not None else None, key))
        if self.stop is not None:  # after the backup: an epoch that ended is committed first
            callbacks.append(StopAtSafePoint(self.stop))
        return callbacks

    def fit_member(self, member: int, model: keras.Model | None = None) -> dict[str, list[float]]:
        """Train one member to the end of its schedule (or early stop), continuing from its
        backup if a killed run left one. Returns its whole per-epoch history. ``model``: the
        member already built (member 0 is built before the run folder exists)."""
        task, run = self.task, self.run
        tag = RunFolder.tag(member, task.ensemble)
        with self.backup_folder(tag) as backup_dir:
            history = self.resume_member(tag, backup_dir)
            if history.get("loss"):
                print(f"Resuming {tag or 'training'} after epoch {len(history['loss'])}", flush=True)
                if schedule_done(history, task.config):  # killed between its last epoch and its record
                    return history if run is not None else {}
            model = model or task.build_member(member)
            self.fit_stages(member, model, backup_dir, history)
        if self.stop is not None:
            self.stop.check()  # one that came as fit ended
        return self.trained_history(tag, model)

    @contextlib.contextmanager
    def backup_folder(self, tag: str) -> Iterator[Path]:
        """The member's backup folder: the run folder's on the chief. A worker that is not
        the chief backs up into a folder of its own (removed at the end), starting from the
        chief's backup when the run is resumed."""
        if self.run is not None:
            yield self.run.backup_dir(tag)
            return
        scratch = Path(tempfile.mkdtemp(prefix=f"keras-blood-{self.task.cluster.name}-"))
        try:
            backup_dir = scratch / "backup"
            if self.record is not None and self.record.backup_dir(tag).is_dir():
                shutil.copytree(self.record.backup_dir(tag), backup_dir)
            yield backup_dir
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def resume_member(self, tag: str, backup_dir: Path) -> dict[str, list[float]]:
        """The member's history up to the epoch its backup holds (the backup's weights
        checked against its record), and on the chief its best checkpoint so far
        (``self.best``); the chief's checkpoint and history file are first put back to what
        the backup's record says."""
        task, run, record = self.task, self.run, self.record
        backup = member_backup(backup_dir)  # its weights checked against its record
        if run is not None:
            restore_checkpoint(run.checkpoint(tag), backup)
            truncate_history(run.history_csv(tag), backup.epoch if backup else 0)
        history = read_history(record.history_csv(tag)) if record else {}
        history = {key: values[: backup.epoch if backup else 0] for key, values in history.items()}
        # The best checkpoint so far: what a new best must beat, and what the file holds.
        self.best = (
            BestCheckpoint(
                run.checkpoint(tag),
                best_value(history, task.selection_key) if task.selection_key else math.inf,
                backup.best if backup else None,
            )
            if run
            else None
        )
        return history

    def fit_stages(self, member: int, model: keras.Model, backup_dir: Path, history: dict[str, list[float]]) -> None:
        """``fit`` each stage of the member's schedule (``train.transfer_schedule``), from
        the epoch its backup holds."""
        task, config = self.task, self.task.config
        training = task.build_training_inputs(member)
        try:
            for stage in training_stages(config, model, task.transfer, backup_dir):
                if stage.trainable is not None:  # train.transfer_schedule: other layers, another optimizer
                    set_trainable(stage.trainable)
                    task.compile(model, stage.config)
                    trainable = sum(int(math.prod(w.shape)) for w in model.trainable_weights)
                    print(f"{stage.title}; {trainable:,} trainable parameters", flush=True)
                callbacks = self.callbacks(member, stage.backup_dir, history)
                backup = next(callback for callback in callbacks if isinstance(callback, EpochBackup))
                fitted = model.fit(
                    training.data,
                    steps_per_epoch=training.steps,
                    validation_data=training.validation,
                    initial_epoch=backup.initial_epoch or len(history.get("loss", [])),
                    epochs=stage.epochs,
                    callbacks=callbacks,
                    class_weight=training.class_weight,
                    # One line per epoch in logs and CI; a live bar in a terminal.
                    verbose=1 if sys.stdout.isatty() else 2,
                    shuffle=False,  # the tf.data pipeline already shuffles, seeded
                )
                # What the next stage's callbacks start from, the same on every worker (a stage
                # resumed past its last epoch trains none and adds nothing).
                history = {
                    key: history.get(key, []) + fitted.history.get(key, []) for key in {**history, **fitted.history}
                }
        finally:
            if self.stop is not None:
                self.stop.deferred = False  # outside fit, a stop is raised at once

    def trained_history(self, tag: str, model: keras.Model) -> dict[str, list[float]]:
        """The trained member's whole history, from the chief's record ({} on another
        worker); a KerasBloodError where training diverged."""
        task, run = self.task, self.run
        # Equal on every worker of a cluster: the gradients were synchronised.
        who = f"{task.cluster.name}: " if task.cluster else ""
        print(f"{who}{tag or 'model'} trained; weights fingerprint {weights_fingerprint(model)}", flush=True)
        if run is None:
            return {}
        history = read_history(run.history_csv(tag))
        if not history or any(not math.isfinite(v) for v in history["loss"]):
            raise KerasBloodError(
                f"training diverged (loss became NaN/inf at epoch {len(history.get('loss', []))}); "
                f"lower train.learning_rate (now {task.config.train.learning_rate}). Logs: {run.path}"
            )
        return history

    # ------------------------------------------------------------------ the record

    def write_run_report(
        self, metrics: dict[str, Any], histories: list[dict[str, list[float]]], curves: dict[str, Any]
    ) -> None:
        """The test report (:func:`keras_blood.evaluation.report.write_report`), the test
        scalars for TensorBoard and the learning curves."""
        config, run, data = self.task.config, self.run, self.task.data
        if metrics["split"] is None:  # no test split, or not read (eval.read_test): no test figures to report
            (run.path / "metrics.json").write_text(json.dumps(metrics, indent=2))
            plot_learning_curves(histories, run.path / "learning_curves.png", config.name)
            print(f"Trained {metrics['epochs_run']} epochs in {metrics['train_seconds']:.0f} s; run folder {run.path}")
            return
        with tf.summary.create_file_writer(str(run.path / "logs" / "test")).as_default():
            for key in ("accuracy", "precision_macro", "recall_macro", "f1_macro", "auc"):
                tf.summary.scalar(f"test/{key}", metrics[key], step=metrics["epochs_run"])
        plot_learning_curves(histories, run.path / "learning_curves.png", config.name)
        write_report(
            run.path,
            metrics,
            data.splits["test"].labels,
            curves,
            data.class_names,
            config.name,
            f"Test ({config.name})",
        )
        for number, m in enumerate(metrics.get("members", []), start=1):
            print(f"  member {number} alone: accuracy {m['accuracy']:.4f}, AUC {m['auc']:.4f}")
        print(f"Trained {metrics['epochs_run']} epochs in {metrics['train_seconds']:.0f} s; run folder {run.path}")


def no_space(config: Config, run: RunFolder | None, exc: BaseException) -> RunError:
    """One line for a full disk met while training, evaluating or exporting: what was
    being written, where, and how to go on."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    filename = getattr(exc, "filename", None)
    detail = f"{exc.strerror}: {filename}" if isinstance(exc, OSError) and exc.strerror and filename else text[:300]
    publish_dir = str(config.output.publish_dir)
    setting = "output.publish_dir" if publish_dir in f"{filename} {text}" else "output.runs_dir"
    folder = (
        config.output.publish_dir if setting == "output.publish_dir" else (run.path if run else config.output.runs_dir)
    )
    then = (
        f"then continue with: python -m keras_blood.train --resume {run.path}"
        if run
        else f"or --set {setting}=<a folder with room>"
    )
    return RunError(f"no space left on device ({detail}); free space under {str(folder)!r} ({setting}), {then}")


def train(config: Config, resume: str | Path | None = None) -> TrainResult:
    """Run the whole experiment: train, evaluate on the test split, export.

    ``resume``: a run folder of this config to continue where it stopped. The same call on
    every worker of a ``TF_CONFIG`` cluster trains data-parallel.

    A full disk is a one-line RunError naming the folder and how to go on (the run stays
    resumable); SIGTERM raises :class:`Stopped` (a KeyboardInterrupt) once the run folder
    is being written, with the folder to resume on it.
    """
    cluster = cluster_from_env()  # before TensorFlow starts: it must know the cluster first
    data_split = None
    if cluster is None or cluster.is_chief:  # only the chief writes the run folder
        check_run_target(config, resume)
        # Before the data is read (or prepared again): a resumed run goes on only on the
        # split it trained on.
        data_split = split_record(config.data, config.seed)
        if resume:
            check_resumed_data(RunFolder(Path(resume)), data_split)
    strategy = select_strategy(config.train.distribute, cluster)
    print(f"Device: {describe_devices(strategy, cluster)}", flush=True)
    # Everything that can fail on user input happens before a run folder exists.
    task = Task.from_config(config, strategy, cluster)
    sizes = ", ".join(f"{k} {len(v)}" for k, v in task.data.splits.items())
    print(f"Data: {task.data.name} {task.data.image_shape}, {task.data.num_classes} classes; {sizes}", flush=True)
    trainer = Trainer(task, resume, data_split)
    try:
        with stop_on_sigterm(cluster is None) as trainer.stop:
            return trainer.fit()
    except KeyboardInterrupt as interrupt:
        where = trainer.run.path if trainer.run else resume
        if isinstance(interrupt, Stopped):
            interrupt.run = Path(where) if where else None
        elif where or cluster is not None:
            where = where or "the chief's run folder"
            print(f"\nInterrupted. Continue with: python -m keras_blood.train --resume {where}", file=sys.stderr)
        raise
    except Exception as exc:
        if isinstance(exc, KerasBloodError) or not out_of_space(exc):
            raise
        raise no_space(config, trainer.run, exc) from None
