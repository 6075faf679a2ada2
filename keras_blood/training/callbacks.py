"""TensorBoard views beyond loss curves (per-epoch validation confusion matrix and PR
curves), the training clock, resumable early stopping, and the epoch backup a killed run
continues from."""

from __future__ import annotations

import io
import math
import re
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from tensorboard.plugins.pr_curve import summary as pr_curve_summary

from keras_blood.evaluation.plots import plot_confusion_matrix
from keras_blood.files import detach_open_file
from keras_blood.training.backups import damaged, publish_checkpoint, read_backup, remove_leftovers, write_backup
from keras_blood.training.keras_metrics import ConfusionMatrix, ScoreHistogram


def tag(name: str) -> str:
    """A class name as a TensorBoard tag ("immature granulocyte" -> "immature_granulocyte")."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def compiled_metric(model: keras.Model, kind: type) -> keras.metrics.Metric:
    """The metric of type ``kind`` that ``model`` was compiled with."""
    stack = list(model.metrics)
    while stack:
        metric = stack.pop()
        if isinstance(metric, kind):
            return metric
        stack += getattr(metric, "metrics", [])  # Keras's container of the compiled metrics
    raise ValueError(
        f"compile the model with keras_blood.training.keras_metrics.validation_metrics(): no {kind.__name__}"
    )


class ValidationTensorBoard(keras.callbacks.TensorBoard):
    """Keras's TensorBoard callback plus, after each epoch, on the validation set:

    - ``confusion_matrix``: an image, counts and row-normalised (Images tab);
    - ``pr_curve/<class>``: one-vs-rest precision-recall curve per class (PR Curves tab);
    - ``epoch_f1_macro`` and ``epoch_auc`` scalars beside Keras's ``epoch_accuracy``.

    All of them come from the validation pass Keras already makes: the model is compiled
    with ``keras_blood.training.keras_metrics.validation_metrics``, whose variables hold that
    pass's confusion matrix and score histogram when the epoch ends (nothing is predicted
    again), and Keras's own scalars include their results, ``f1_macro`` and ``auc``.

    They go through Keras's own validation writer, into ``<log_dir>/validation`` at the
    epoch's step: a second writer would start a second event file there, and TensorBoard
    by default follows only the newest file of a run while it is being written.
    TensorBoard has no TF2 op for PR curves; the plugin's ``raw_data_pb`` builds the
    summary and ``write_raw_pb`` writes it.

    The PR curves and scalars are written every epoch. The figure costs a noticeable part
    of a small model's epoch on a CPU (measured: docs/benchmarks.md), so it is drawn every
    ``image_every`` epochs and after the last one, in a background thread, one at a time.

    ``write=False`` is for workers other than the chief in multi-worker training:
    reading a metric summed across workers is a collective op, so every worker reads the
    same variables in the same order each epoch, and only the chief writes anything.
    """

    def __init__(self, log_dir, class_names, *, write=True, image_every=5, num_thresholds=101, **kwargs):
        super().__init__(log_dir=str(log_dir), **kwargs)
        self.class_names = list(class_names)
        self.write = write
        self.image_every = image_every
        self.num_thresholds = num_thresholds
        self._figures: ThreadPoolExecutor | None = None
        self._figure: Future | None = None  # the one being drawn
        self._undrawn: tuple[np.ndarray, int] | None = None  # the latest confusion matrix and its epoch

    @property
    def _train_writer(self):
        return super()._train_writer if self.write else tf.summary.create_noop_writer()

    @property
    def _val_writer(self):
        return super()._val_writer if self.write else tf.summary.create_noop_writer()

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        self._figures = ThreadPoolExecutor(max_workers=1, thread_name_prefix="confusion-matrix")

    def on_train_batch_end(self, batch, logs=None):
        # Keras writes every batch's logs as scalars even with update_freq="epoch", where
        # no writer records them; that costs every step time per metric (docs/benchmarks.md).
        super().on_train_batch_end(batch, logs if self.update_freq != "epoch" else None)

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, logs)  # Keras's scalars, val_f1_macro and val_auc among them
        if not any(key.startswith("val_") for key in logs or {}):
            return  # no validation pass this epoch
        matrix = compiled_metric(self.model, ConfusionMatrix).counts()
        counts = compiled_metric(self.model, ScoreHistogram).pr_counts(self.num_thresholds)
        if not self.write:
            return
        with self._val_writer.as_default(step=epoch):
            for name, (tp, fp, tn, fn) in zip(self.class_names, counts):
                summary = pr_curve_summary.raw_data_pb(
                    f"pr_curve/{tag(name)}",
                    tp,
                    fp,
                    tn,
                    fn,
                    precision=tp / np.maximum(tp + fp, 1),
                    recall=tp / np.maximum(tp + fn, 1),
                    num_thresholds=self.num_thresholds,
                    display_name=name,
                )
                tf.summary.experimental.write_raw_pb(summary.SerializeToString())
        self._val_writer.flush()  # visible now, not when training ends
        self._undrawn = (matrix, epoch)
        if (epoch + 1) % self.image_every == 0:
            self._draw()

    def on_train_end(self, logs=None):
        if self._undrawn is not None:
            self._draw()  # the last epoch's, whatever image_every says
        self._figures.shutdown(wait=True)
        if self._figure is not None:
            self._figure.result()  # raises what drawing raised
        super().on_train_end(logs)  # closes the writers

    def _draw(self):
        matrix, epoch = self._undrawn
        self._undrawn = None
        if self._figure is not None:
            self._figure.result()  # one at a time, so figures never pile up behind training
        self._figure = self._figures.submit(self._write_figure, matrix, epoch)

    def _write_figure(self, matrix: np.ndarray, epoch: int) -> None:
        png = io.BytesIO()
        plot_confusion_matrix(matrix, self.class_names, png, f"validation, epoch {epoch + 1}")
        with self._val_writer.as_default(step=epoch):
            tf.summary.image("confusion_matrix", tf.image.decode_png(png.getvalue(), channels=3)[None])
        self._val_writer.flush()


class SourceValidation(keras.callbacks.Callback):
    """data.sources: after each epoch, each source's validation loss and accuracy, added to
    the epoch's logs as ``val_<source>_loss`` and ``val_<source>_accuracy``, and their means
    over the sources as ``val_sources_loss`` and ``val_sources_accuracy`` (what the kept
    checkpoint is chosen on: Config.selection_key). history.csv and TensorBoard (the
    validation run's ``epoch_<source>_accuracy``) show them. Put it before the callbacks
    that read them.

    ``sources``: name -> (the source's validation pipeline, its labels); ``loss``: the
    training loss, so that each source's figure is the pooled ``val_loss``'s kind."""

    def __init__(self, sources: dict[str, tuple[Any, np.ndarray]], loss: keras.losses.Loss):
        super().__init__()
        self.sources = sources
        self.loss = loss

    def on_epoch_end(self, epoch, logs=None):
        losses, accuracies = [], []
        for name, (inputs, labels) in self.sources.items():
            probs = self.model.predict(inputs, verbose=0)
            one_hot = np.eye(probs.shape[1], dtype=np.float32)[labels]
            losses.append(float(self.loss(one_hot, probs).numpy()))
            accuracies.append(float(np.mean(probs.argmax(axis=1) == labels)))
            logs[f"val_{name}_loss"], logs[f"val_{name}_accuracy"] = losses[-1], accuracies[-1]
        logs["val_sources_loss"], logs["val_sources_accuracy"] = float(np.mean(losses)), float(np.mean(accuracies))


class ElapsedTime(keras.callbacks.Callback):
    """Adds wall-clock minutes since the start of training to each epoch's logs, so
    history.csv and TensorBoard show accuracy against training time. Put it first:
    only the callbacks after it see the key.

    ``since``: a ``time.perf_counter()`` reading to count from instead of this fit's
    start, so the members of an ensemble share one clock."""

    def __init__(self, since: float | None = None):
        super().__init__()
        self.since = since

    def on_train_begin(self, logs=None):
        self.start = time.perf_counter() if self.since is None else self.since

    def on_epoch_end(self, epoch, logs=None):
        logs["elapsed_minutes"] = (time.perf_counter() - self.start) / 60


class ResumableEarlyStopping(keras.callbacks.EarlyStopping):
    """EarlyStopping that continues from the epochs a resumed run already trained:
    ``past`` are their values of the monitored key (from history.csv), so the best value
    and the epochs waited since carry over instead of starting again."""

    def __init__(self, past: list[float] | None = None, **kwargs):
        super().__init__(**kwargs)
        self.past = list(past or [])

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        if self.past:
            best = min(range(len(self.past)), key=self.past.__getitem__)
            self.best, self.best_epoch = self.past[best], best
            self.wait = len(self.past) - 1 - best


@dataclass
class BestCheckpoint:
    """A member's best checkpoint, kept across the stages of its training: the file, the
    lowest ``val_loss`` recorded, and the record of what the file holds."""

    path: Path
    value: float = math.inf
    record: dict[str, Any] | None = None


def variables_bytes(model: keras.Model) -> int:
    """Bytes of the model's and its optimizer's variables: about a weights file's size."""
    variables = list(model.weights) + list(getattr(model.optimizer, "variables", []) or [])
    return sum(math.prod(v.shape) * _dtype_bytes(v.dtype) for v in variables)


def _dtype_bytes(dtype) -> int:
    bits = "".join(c for c in keras.backend.standardize_dtype(dtype) if c.isdigit())
    return max(1, int(bits or 8) // 8)  # float32 4, bfloat16 2, bool 1


class EpochBackup(keras.callbacks.BackupAndRestore):
    """Keras's BackupAndRestore (the weights, the optimizer's state and the epoch, saved at
    the end of every epoch and restored when a killed run's fit starts again), written so
    that a kill or a full disk at any moment leaves the last complete epoch whole.

    Keras's callback rewrites ``latest.weights.h5`` in place and then the epoch in
    ``training_metadata.json``: a kill during either leaves a file that cannot be read, or
    weights of one epoch under the number of another. Its ``double_checkpoint`` copies
    both to ``.bkp`` files first, which restores an unreadable weights file but neither a
    metadata file cut short (a JSONDecodeError, not the OSError it falls back on) nor a
    kill between the two writes. Here each epoch's weights go to a new file, then the
    metadata naming it (size, SHA-256) is renamed into place: that rename commits the
    epoch (:func:`keras_blood.training.backups.write_backup`).

    ``best``: where the chief keeps the best checkpoint (None on the other workers of a
    cluster): an epoch with a lower ``monitor`` (``val_loss``) is published there after its
    commit; with ``monitor`` None (no validation split), every epoch is, so the last is kept.

    The backup is read when the callback is made, before ``fit``: ``fit`` must be given
    :attr:`initial_epoch` (Keras's own callback sets a private attribute of the model instead).
    """

    def __init__(self, backup_dir: Path, best: BestCheckpoint | None = None, monitor: str | None = "val_loss"):
        super().__init__(str(backup_dir), save_freq="epoch", delete_checkpoint=False)
        self.folder = Path(backup_dir)
        self.best = best
        self.monitor = monitor
        self.size: int | None = None  # the last weights file's bytes
        self.backup = read_backup(self.folder)  # checked: a RunError where it is damaged

    @property
    def initial_epoch(self) -> int | None:
        """The epoch ``fit`` continues after: the backup's (None: no epoch committed)."""
        return self.backup.epoch if self.backup else None

    def on_train_begin(self, logs=None):
        backup = self.backup
        remove_leftovers(self.folder, keep=backup.weights.name if backup else None)
        if backup is None:
            return
        if self.model.optimizer is not None and not self.model.optimizer.built:
            self.model.optimizer.build(self.model.trainable_variables)  # its variables, to load into
        try:
            self.model.load_weights(str(backup.weights))
        except Exception as exc:  # h5py and Keras word a bad file many ways
            why = " ".join(str(exc).split())[:200]
            raise damaged(self.folder, f"{backup.weights.name} does not load ({type(exc).__name__}: {why})") from None
        self.size = backup.weights.stat().st_size

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor) if self.monitor else None
        best = self.best
        if self.monitor is None:
            improved = best is not None
        else:
            improved = best is not None and value is not None and math.isfinite(value) and value < best.value
        size = self.size or variables_bytes(self.model)
        backup = write_backup(
            self.folder,
            epoch + 1,
            self.save,
            size + size // 10 + (1 << 16),
            improved,
            best.record if best else None,
        )
        self.size = backup.weights.stat().st_size
        if improved:
            best.value, best.record = math.inf if value is None else value, backup.best
            publish_checkpoint(backup, best.path)

    def save(self, path: Path) -> None:
        try:
            self.model.save_weights(str(path))
        except BaseException:
            detach_open_file(path)  # h5py keeps the file open after a failed write
            raise

    def on_train_end(self, logs=None):
        pass  # the trainer removes a member's backup once its record says it is done
