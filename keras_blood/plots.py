"""Figures people would rather look at than read: confusion matrix, learning curves, ROC
curves, reliability diagrams and grids of images. Each takes a path or a binary file object (TensorBoard
summaries render into memory)."""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers or in CI

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import ConfusionMatrixDisplay, roc_curve  # noqa: E402

from keras_blood.metrics import ECE_BINS, expected_calibration_error, one_vs_rest_aucs, reliability_bins  # noqa: E402

Target = Path | BinaryIO


def plot_confusion_matrix(matrix, class_names: list[str], path: Target, title: str = "") -> Target:
    matrix = np.asarray(matrix)
    fig, axes = plt.subplots(1, 2, figsize=(15, 6.5))
    rows = matrix.sum(axis=1, keepdims=True)
    normalised = np.divide(matrix, rows, out=np.zeros_like(matrix, dtype=float), where=rows > 0)
    for ax, data, fmt, what in ((axes[0], matrix, "d", "counts"), (axes[1], normalised, ".2f", "row-normalised")):
        ConfusionMatrixDisplay(data, display_labels=class_names).plot(
            ax=ax, values_format=fmt, cmap="Blues", colorbar=False, xticks_rotation=45
        )
        ax.set_title(f"{title} ({what})" if title else what)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_learning_curves(
    history: dict[str, list[float]] | list[dict[str, list[float]]], path: Target, title: str = ""
) -> Target:
    """Train and validation curves per metric; a list of histories (ensemble members,
    labelled 1, 2, ...) shares the axes."""
    histories = history if isinstance(history, list) else [history]
    skip = {"learning_rate", "elapsed_minutes"}
    metrics = [k for k in histories[0] if not k.startswith("val_") and k not in skip]
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.5 * len(metrics), 4), squeeze=False)
    for ax, name in zip(axes[0], metrics):
        for number, h in enumerate(histories, start=1):
            member = f"member {number} " if len(histories) > 1 else ""
            epochs = np.arange(1, len(h[name]) + 1)
            ax.plot(epochs, h[name], label=f"{member}train {name}")
            if f"val_{name}" in h:
                ax.plot(epochs, h[f"val_{name}"], label=f"{member}val {name}")
        ax.set_xlabel("epoch")
        ax.set_title(name)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_roc_curves(labels, probs, class_names: list[str], path: Target, title: str = "") -> Target:
    """One-vs-rest ROC curve per class; a class without positives or negatives has none."""
    labels = np.asarray(labels).reshape(-1)
    fig, ax = plt.subplots(figsize=(7, 6.5))
    for k, (name, auc) in enumerate(zip(class_names, one_vs_rest_aucs(labels, probs))):
        if not np.isnan(auc):
            fpr, tpr, _ = roc_curve(labels == k, probs[:, k])
            ax.plot(fpr, tpr, label=f"{name} (AUC {auc:.3f})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(f"{title} (one-vs-rest ROC)" if title else "one-vs-rest ROC")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_reliability_diagram(labels, curves: dict[str, np.ndarray], path: Target, title: str = "") -> Target:
    """Accuracy against top-label confidence in the ECE's 15 bins, one line per named set
    of probabilities (e.g. before and after calibration), over how many examples each
    bin holds. On the diagonal: calibrated; below it: over-confident."""
    fig, (ax, below) = plt.subplots(
        2, 1, figsize=(6.5, 7.5), sharex=True, gridspec_kw={"height_ratios": (3, 1)}
    )
    edges = np.linspace(0.0, 1.0, ECE_BINS + 1)
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1, label="calibrated")
    width = np.diff(edges)[0] / (len(curves) + 1)
    for number, (name, probs) in enumerate(curves.items()):
        counts, accuracy, confidence = reliability_bins(labels, probs)
        filled = counts > 0
        ece = expected_calibration_error(labels, probs)
        ax.plot(confidence[filled], accuracy[filled], marker="o", label=f"{name} (ECE {ece:.4f})")
        below.bar(edges[:-1] + (number + 0.5) * width, counts, width=width, align="edge", label=name)
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title(f"{title} (reliability, {ECE_BINS} bins)" if title else f"reliability, {ECE_BINS} bins")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize="small")
    below.set_yscale("log")
    below.set_xlabel("confidence (highest probability)")
    below.set_ylabel("examples")
    below.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_image_grid(images, captions: list[str], path: Target, title: str = "", columns: int = 5) -> Target:
    """uint8 ``[N, H, W, 3]`` images in a grid, each with its caption; "nothing to show" if N = 0."""
    rows = max(1, -(-len(images) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(2.6 * columns, 3.1 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, caption in zip(axes.flat, images, captions):
        ax.imshow(image, interpolation="nearest")
        ax.set_title(caption, fontsize=8)
    if not len(images):
        axes[0, 0].text(0, 0.5, "nothing to show", fontsize=12)
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.4 / fig.get_figheight()) if title else None)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
