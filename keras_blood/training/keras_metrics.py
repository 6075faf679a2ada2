"""Keras metrics that keep what the validation views need (keras_blood.training.callbacks), so they
come from the validation pass Keras already makes each epoch instead of a second one.

Compiled with the model, they also report on the training batches (``f1_macro``,
``auc`` beside ``accuracy``). Their variables are summed across replicas and workers
like any Keras metric's.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf


def _weights(sample_weight, index: tf.Tensor, dtype) -> tf.Tensor:
    """Each example's weight (1 without ``sample_weight``), in the shape of ``index``
    (one row per example). Counting by ``unsorted_segment_sum`` keeps the traced graph
    small: each metric is traced into the train and the test step of every fit."""
    if sample_weight is None:
        return tf.ones_like(index, dtype)
    weight = tf.reshape(tf.cast(sample_weight, dtype), [-1] + [1] * (index.shape.rank - 1))
    return tf.broadcast_to(weight, tf.shape(index))


class ConfusionMatrix(keras.metrics.Metric):
    """Counts of (true class, predicted class) from one-hot labels and class scores.
    ``result()`` is the macro F1 of those counts over the classes the labels have, as
    ``classification_metrics`` (sklearn, zero_division=0) computes it; ``counts()`` the matrix itself."""

    def __init__(self, num_classes: int, name: str = "f1_macro", **kwargs):
        super().__init__(name=name, **kwargs)
        self.num_classes = num_classes
        self.matrix = self.add_variable(shape=(num_classes, num_classes), initializer="zeros", name="matrix")

    def update_state(self, y_true, y_pred, sample_weight=None):
        k = self.num_classes
        cell = tf.argmax(y_true, -1, output_type=tf.int32) * k + tf.argmax(y_pred, -1, output_type=tf.int32)
        counts = tf.math.unsorted_segment_sum(_weights(sample_weight, cell, self.dtype), cell, k * k)
        self.matrix.assign_add(tf.reshape(counts, (k, k)))

    def result(self):
        true_positives = tf.linalg.diag_part(self.matrix)
        true_counts = tf.reduce_sum(self.matrix, 1)
        # 2 TP / (2 TP + FP + FN), averaged over the classes the labels have (all of them
        # where none has any), as classification_metrics averages it.
        f1 = tf.math.divide_no_nan(2 * true_positives, tf.reduce_sum(self.matrix, 0) + true_counts)
        present = tf.cast(true_counts > 0, f1.dtype)
        present = tf.where(tf.reduce_any(true_counts > 0), present, tf.ones_like(present))
        return tf.reduce_sum(f1 * present) / tf.reduce_sum(present)

    def counts(self) -> np.ndarray:
        return self.matrix.numpy().round().astype(np.int64)  # read summed over replicas, as any metric

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes}


class ScoreHistogram(keras.metrics.Metric):
    """For each class, how many examples of that class (positives) and of the others
    (negatives) scored in each of ``buckets`` equal slices of [0, 1]: bucket
    ``floor(score * (buckets - 1))``, so the last holds a score of exactly 1.

    ``result()`` is the mean one-vs-rest ROC AUC over the classes that have positives and
    negatives, i.e. MedMNIST's AUC (keras_blood.evaluation.metrics.medmnist_auc), except that scores
    in one bucket count as ties: with the default 1,001 buckets (width 1e-3) it stays
    close to the exact figure on a trained model's scores (less so where most scores
    fall in a few buckets, as an untrained model's do), and more buckets cost every
    training step more (both measured: docs/benchmarks.md). ``pr_counts()`` gives one-vs-rest
    precision-recall counts at evenly spaced thresholds from it.
    """

    def __init__(self, num_classes: int, buckets: int = 1001, name: str = "auc", **kwargs):
        super().__init__(name=name, **kwargs)
        self.num_classes, self.buckets = num_classes, buckets
        # [class, negative / positive, bucket]
        self.histogram = self.add_variable(shape=(num_classes, 2, buckets), initializer="zeros", name="histogram")

    def update_state(self, y_true, y_pred, sample_weight=None):
        k, n = self.num_classes, self.buckets
        bucket = tf.cast(tf.clip_by_value(tf.cast(y_pred, tf.float32), 0.0, 1.0) * (n - 1), tf.int32)
        positive = tf.one_hot(tf.argmax(y_true, -1), k, dtype=tf.int32)
        index = (tf.range(k) * 2 + positive) * n + bucket  # [batch, class] -> flat histogram index
        counts = tf.math.unsorted_segment_sum(_weights(sample_weight, index, self.dtype), index, k * 2 * n)
        self.histogram.assign_add(tf.reshape(counts, (k, 2, n)))

    def result(self):
        negatives, positives = self.histogram[:, 0], self.histogram[:, 1]
        # Negatives scoring below each bucket, plus half of those in it (ties).
        below = tf.cumsum(negatives, axis=-1, exclusive=True) + negatives / 2
        pairs = tf.reduce_sum(positives, -1) * tf.reduce_sum(negatives, -1)
        aucs = tf.reduce_sum(positives * below, -1) / tf.maximum(pairs, 1.0)
        defined = tf.cast(pairs > 0, self.dtype)
        return tf.math.divide_no_nan(tf.reduce_sum(aucs * defined), tf.reduce_sum(defined))

    def pr_counts(self, num_thresholds: int = 101) -> np.ndarray:
        """``[class, 4, num_thresholds]``: TP, FP, TN, FN of "score >= i / (num_thresholds - 1)",
        the counts ``tensorboard.plugins.pr_curve.summary.raw_data_pb`` takes."""
        step, remainder = divmod(self.buckets - 1, num_thresholds - 1)
        if remainder:
            raise ValueError(f"num_thresholds - 1 = {num_thresholds - 1} must divide buckets - 1 = {self.buckets - 1}")
        histogram = self.histogram.numpy().astype(np.int64)
        at_or_above = np.cumsum(histogram[..., ::-1], axis=-1)[..., ::-1][..., ::step]  # [class, 2, thresholds]
        totals = histogram.sum(-1, keepdims=True)
        fp, tp = at_or_above[:, 0], at_or_above[:, 1]
        tn, fn = totals[:, 0] - fp, totals[:, 1] - tp
        return np.stack([tp, fp, tn, fn], axis=1)

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes, "buckets": self.buckets}


def validation_metrics(num_classes: int) -> list[keras.metrics.Metric]:
    """What training compiles beside "accuracy" for the validation views (training/task.py)."""
    return [ConfusionMatrix(num_classes), ScoreHistogram(num_classes)]
