"""The compiled metrics behind the validation views (keras_blood.training.keras_metrics) agree with
keras_blood.evaluation.metrics and TensorBoard."""

import numpy as np
import pytest
import tensorflow as tf
from tensorboard.plugins.pr_curve import summary as pr_curve_summary

from keras_blood.evaluation.metrics import classification_metrics
from keras_blood.training.keras_metrics import ConfusionMatrix, ScoreHistogram


def predictions(n=600, k=5, seed=0, absent=None):
    """Labels and softmax scores of a fair classifier; class ``absent`` has no examples."""
    rng = np.random.default_rng(seed)
    labels = rng.choice([c for c in range(k) if c != absent], n)
    logits = rng.normal(size=(n, k)) + 4 * np.eye(k)[labels] * rng.uniform(0, 1, (n, 1))
    return labels, tf.nn.softmax(logits).numpy().astype(np.float32)


def fed(metric, labels, probs, batch=64):
    """``metric`` after one pass over the examples in batches, as Keras feeds it."""
    one_hot = np.eye(probs.shape[1], dtype=np.float32)[labels]
    for start in range(0, len(labels), batch):
        metric.update_state(one_hot[start : start + batch], probs[start : start + batch])
    return metric


@pytest.mark.parametrize("absent", [None, 2])
def test_macro_f1_auc_and_confusion_matrix_match_the_reported_metrics(absent):
    labels, probs = predictions(absent=absent)
    expected = classification_metrics(labels, probs, list("abcde"))
    confusion, histogram = fed(ConfusionMatrix(5), labels, probs), fed(ScoreHistogram(5), labels, probs)
    np.testing.assert_array_equal(confusion.counts(), expected["confusion_matrix"])
    assert float(confusion.result()) == pytest.approx(expected["f1_macro"], abs=1e-6)
    # Ties within a bucket of width 1e-3 are all the AUC approximates.
    assert float(histogram.result()) == pytest.approx(expected["auc"], abs=1e-4)


def test_pr_counts_are_tensorboards_own():
    labels, probs = predictions()
    counts = fed(ScoreHistogram(5), labels, probs).pr_counts(101)
    for k in range(5):
        summary = pr_curve_summary.pb("x", labels=labels == k, predictions=probs[:, k], num_thresholds=101)
        np.testing.assert_array_equal(counts[k], tf.make_ndarray(summary.value[0].tensor)[:4])


def test_pr_thresholds_must_fall_on_bucket_edges():
    with pytest.raises(ValueError, match="must divide"):
        ScoreHistogram(3, buckets=101).pr_counts(7)


def test_reset_and_sample_weights():
    labels, probs = predictions(n=100)
    histogram = fed(ScoreHistogram(5), labels, probs)
    histogram.reset_state()
    assert histogram.pr_counts(101).sum() == 0
    one_hot, twice = np.eye(5, dtype=np.float32)[labels], np.full(100, 2.0)
    confusion = ConfusionMatrix(5)
    confusion.update_state(one_hot, probs, sample_weight=twice)
    histogram.update_state(one_hot, probs, sample_weight=twice)
    assert confusion.counts().sum() == 200
    np.testing.assert_array_equal(histogram.pr_counts(101)[:, :, 0].sum(1), 200)  # TP + FP + TN + FN
