"""Classification metrics (keras_blood.evaluation.metrics) against scikit-learn and MedMNIST's evaluator."""

import numpy as np
import pytest
from sklearn.metrics import f1_score, precision_score, recall_score, roc_auc_score

from keras_blood.evaluation.metrics import classification_metrics, medmnist_auc

NAMES = ["a", "b", "c", "d"]


def _predictions(n=200, k=4, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k)) + 2.0 * np.eye(k)[labels]
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return labels, probs


def test_metrics_agree_with_scikit_learn():
    labels, probs = _predictions()
    m = classification_metrics(labels, probs, NAMES)
    pred = probs.argmax(1)
    assert m["accuracy"] == pytest.approx(np.mean(pred == labels))
    assert m["precision_macro"] == pytest.approx(precision_score(labels, pred, average="macro"))
    assert m["recall_macro"] == pytest.approx(recall_score(labels, pred, average="macro"))
    assert m["f1_macro"] == pytest.approx(f1_score(labels, pred, average="macro"))
    # MedMNIST's AUC is the unweighted mean of one-vs-rest AUCs.
    assert m["auc"] == pytest.approx(roc_auc_score(labels, probs, multi_class="ovr", average="macro"))
    assert np.array(m["confusion_matrix"]).sum() == len(labels)
    assert m["per_class"]["c"]["support"] == np.sum(labels == 2)


def test_auc_skips_a_class_without_examples():
    labels, probs = _predictions()
    labels[labels == 3] = 0
    expected = np.mean([roc_auc_score(labels == k, probs[:, k]) for k in range(3)])
    assert medmnist_auc(labels, probs) == pytest.approx(expected)


def test_metrics_agree_with_medmnist_evaluator(tmp_path):
    evaluator = pytest.importorskip("medmnist.evaluator", reason="medmnist (optional) not installed")
    labels, probs = _predictions(n=300, k=8, seed=2)
    arrays = {}
    for split in ("train", "val", "test"):
        arrays[f"{split}_images"] = np.zeros((len(labels), 28, 28, 3), np.uint8)
        arrays[f"{split}_labels"] = labels.reshape(-1, 1)
    np.savez(tmp_path / "bloodmnist.npz", **arrays)
    auc, acc = evaluator.Evaluator("bloodmnist", "test", root=str(tmp_path)).evaluate(probs)
    m = classification_metrics(labels, probs, [str(i) for i in range(8)])
    assert m["accuracy"] == pytest.approx(acc) and m["auc"] == pytest.approx(auc)
