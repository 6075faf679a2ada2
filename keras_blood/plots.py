"""Figures people would rather look at than read: confusion matrix and learning curves."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers or in CI

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import ConfusionMatrixDisplay  # noqa: E402


def plot_confusion_matrix(matrix, class_names: list[str], path: Path, title: str = "") -> Path:
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


def plot_learning_curves(history: dict[str, list[float]], path: Path, title: str = "") -> Path:
    skip = {"learning_rate", "elapsed_minutes"}
    metrics = [k for k in history if not k.startswith("val_") and k not in skip]
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.5 * len(metrics), 4), squeeze=False)
    for ax, name in zip(axes[0], metrics):
        epochs = np.arange(1, len(history[name]) + 1)
        ax.plot(epochs, history[name], label=f"train {name}")
        if f"val_{name}" in history:
            ax.plot(epochs, history[f"val_{name}"], label=f"val {name}")
        ax.set_xlabel("epoch")
        ax.set_title(name)
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
