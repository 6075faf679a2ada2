"""Classification metrics as the papers and MedMNIST report them, and how well the
predicted probabilities are calibrated."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    brier_score_loss,
    classification_report,
    confusion_matrix,
    log_loss,
    precision_recall_fscore_support,
    roc_auc_score,
)


def one_vs_rest_aucs(labels: np.ndarray, probs: np.ndarray) -> list[float]:
    """ROC AUC of each class against the rest; NaN for a class without positives or negatives."""
    labels = np.asarray(labels).reshape(-1)
    defined = [0 < np.sum(labels == k) < len(labels) for k in range(probs.shape[1])]
    return [float(roc_auc_score(labels == k, probs[:, k])) if ok else float("nan") for k, ok in enumerate(defined)]


def medmnist_auc(labels: np.ndarray, probs: np.ndarray) -> float:
    """Mean one-vs-rest ROC AUC over classes, as ``medmnist.evaluator.getAUC`` computes it.

    A class with no positive (or no negative) example has no AUC; it is left out of the
    mean rather than failing, which only happens on small slices of the data.
    """
    aucs = [auc for auc in one_vs_rest_aucs(labels, probs) if not np.isnan(auc)]
    return float(np.mean(aucs)) if aucs else float("nan")


ECE_BINS = 15  # as Guo et al. (2017), "On calibration of modern neural networks"


def reliability_bins(labels: np.ndarray, probs: np.ndarray, bins: int = ECE_BINS):
    """Top-label confidence (the highest probability) in ``bins`` equal-width bins
    ``(k/bins, (k+1)/bins]``: each bin's example count, accuracy and mean confidence
    (NaN for an empty bin)."""
    labels = np.asarray(labels).reshape(-1)
    confidence, correct = probs.max(axis=1), probs.argmax(axis=1) == labels
    which = np.searchsorted(np.linspace(0.0, 1.0, bins + 1)[1:-1], confidence, side="left")
    counts = np.bincount(which, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        accuracy = np.bincount(which, weights=correct, minlength=bins) / counts
        mean_confidence = np.bincount(which, weights=confidence, minlength=bins) / counts
    return counts, accuracy, mean_confidence


def expected_calibration_error(labels: np.ndarray, probs: np.ndarray, bins: int = ECE_BINS) -> float:
    """Top-label ECE: the example-weighted mean over bins of |accuracy - confidence|."""
    counts, accuracy, confidence = reliability_bins(labels, probs, bins)
    filled = counts > 0
    return float(np.sum(counts[filled] * np.abs(accuracy[filled] - confidence[filled])) / counts.sum())


def calibration_metrics(labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """ECE (15 bins), multiclass Brier score (mean over examples of the squared distance
    to the one-hot label, summed over classes: 0 to 2) and NLL (mean -log p(true class),
    probabilities clipped at the dtype's epsilon by scikit-learn)."""
    labels = np.asarray(labels).reshape(-1)
    classes = list(range(probs.shape[1]))
    return {
        "ece": expected_calibration_error(labels, probs),
        "brier": float(brier_score_loss(labels, probs, labels=classes, scale_by_half=False)),
        "nll": float(log_loss(labels, probs, labels=classes)),
    }


def classification_metrics(labels: np.ndarray, probs: np.ndarray, class_names: list[str]) -> dict[str, Any]:
    """Accuracy, macro precision / recall / F1, MedMNIST AUC, calibration (ECE, Brier,
    NLL), per-class report, confusion."""
    labels = np.asarray(labels).reshape(-1)
    predictions = probs.argmax(axis=1)
    classes = list(range(len(class_names)))
    # Macro figures over the classes the labels have: a lab (or a source of data.sources)
    # that lacks a class of the model is not scored zero on it; a full split has them all.
    present_classes = [c for c in classes if np.any(labels == c)] or classes
    precision, recall, f1, _ = precision_recall_fscore_support(
        labels, predictions, labels=present_classes, average="macro", zero_division=0
    )
    report = classification_report(
        labels,
        predictions,
        labels=classes,
        target_names=class_names,
        output_dict=True,
        zero_division=0,
    )
    # Mean recall over the classes that have examples: what accuracy would be with every
    # class equally common, so that labs with other class mixes compare.
    present = [report[name]["recall"] for name in class_names if report[name]["support"] > 0]
    return {
        "num_examples": int(len(labels)),
        "accuracy": float(accuracy_score(labels, predictions)),
        "balanced_accuracy": float(np.mean(present)) if present else float("nan"),
        "precision_macro": float(precision),
        "recall_macro": float(recall),
        "f1_macro": float(f1),
        "auc": medmnist_auc(labels, probs),
        **calibration_metrics(labels, probs),
        "per_class": {name: report[name] for name in class_names},
        "class_names": list(class_names),
        "confusion_matrix": confusion_matrix(labels, predictions, labels=classes).tolist(),
    }


def summary_line(metrics: dict[str, Any]) -> str:
    return (
        f"acc {metrics['accuracy']:.4f}  balanced {metrics.get('balanced_accuracy', float('nan')):.4f}  "
        f"precision {metrics['precision_macro']:.4f}  "
        f"recall {metrics['recall_macro']:.4f}  F1 {metrics['f1_macro']:.4f}  "
        f"AUC {metrics['auc']:.4f}  ECE {metrics['ece']:.4f}  (n={metrics['num_examples']})"
    )


def per_class_table(metrics: dict[str, Any]) -> str:
    """The per-class report as an aligned text table, one class a line."""
    width = max(len("class"), *(len(n) for n in metrics["per_class"]))
    lines = [f"{'class':<{width}}  precision  recall     F1  support"]
    for name, row in metrics["per_class"].items():
        lines.append(
            f"{name:<{width}}  {row['precision']:9.3f}  {row['recall']:6.3f}  "
            f"{row['f1-score']:5.3f}  {int(row['support']):7d}"
        )
    return "\n".join(lines)
