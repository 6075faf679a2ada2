"""TensorBoard views beyond loss curves: per-epoch validation confusion matrix and PR curves."""

from __future__ import annotations

import io
import re
import time

import keras
import numpy as np
import tensorflow as tf
from tensorboard.plugins.pr_curve import summary as pr_curve_summary

from keras_blood.metrics import classification_metrics
from keras_blood.plots import plot_confusion_matrix


def tag(name: str) -> str:
    """A class name as a TensorBoard tag ("immature granulocyte" -> "immature_granulocyte")."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


class ValidationTensorBoard(keras.callbacks.TensorBoard):
    """Keras's TensorBoard callback plus, after each epoch, on the validation set:

    - ``confusion_matrix``: an image, counts and row-normalised (Images tab);
    - ``pr_curve/<class>``: one-vs-rest precision-recall curve per class (PR Curves tab);
    - ``epoch_f1_macro`` and ``epoch_auc`` scalars beside Keras's ``epoch_accuracy``.

    They go through Keras's own validation writer, into ``<log_dir>/validation`` at the
    epoch's step: a second writer would start a second event file there, and TensorBoard
    by default follows only the newest file of a run while it is being written.
    TensorBoard has no TF2 op for PR curves; the plugin's NumPy ``pb`` builds the summary
    and ``write_raw_pb`` writes it.
    """

    def __init__(self, log_dir, validation_data, validation_labels, class_names, num_thresholds=101, **kwargs):
        super().__init__(log_dir=str(log_dir), **kwargs)
        self.validation_data = validation_data  # unshuffled, in the order of validation_labels
        self.validation_labels = np.asarray(validation_labels).reshape(-1)
        self.class_names = list(class_names)
        self.num_thresholds = num_thresholds

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, logs)
        labels, names = self.validation_labels, self.class_names
        probs = self.model.predict(self.validation_data, verbose=0)
        metrics = classification_metrics(labels, probs, names)
        png = io.BytesIO()
        plot_confusion_matrix(metrics["confusion_matrix"], names, png, f"validation, epoch {epoch + 1}")
        with self._val_writer.as_default(step=epoch):
            tf.summary.image("confusion_matrix", tf.image.decode_png(png.getvalue(), channels=3)[None])
            tf.summary.scalar("epoch_f1_macro", metrics["f1_macro"])
            tf.summary.scalar("epoch_auc", metrics["auc"])
            for k, name in enumerate(names):
                summary = pr_curve_summary.pb(
                    f"pr_curve/{tag(name)}",
                    labels=labels == k,
                    predictions=probs[:, k].astype(np.float32),
                    num_thresholds=self.num_thresholds,
                    display_name=name,
                )
                tf.summary.experimental.write_raw_pb(summary.SerializeToString())
        self._val_writer.flush()  # visible now, not when training ends


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
