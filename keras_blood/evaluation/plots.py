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

from keras_blood.config.schema import DataConfig  # noqa: E402
from keras_blood.evaluation.metrics import ECE_BINS, expected_calibration_error, one_vs_rest_aucs, reliability_bins  # noqa: E402
from keras_blood.preparation.cell_crop import cut_cell  # noqa: E402
from keras_blood.preparation.color import color_mask, extract_colors  # noqa: E402

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
    fig, (ax, below) = plt.subplots(2, 1, figsize=(6.5, 7.5), sharex=True, gridspec_kw={"height_ratios": (3, 1)})
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
        fig.suptitle(title, fontsize=12 if "\n" not in title else 10)
    lines = title.count("\n") + 1
    fig.tight_layout(rect=(0, 0, 1, 1 - (0.2 + 0.2 * lines) / fig.get_figheight()) if title else None)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ----------------------------------------------------- colour extraction and cell crop


def sample_images(images: np.ndarray, labels: np.ndarray, per_class: int, seed: int = 0) -> np.ndarray:
    """Indices of up to ``per_class`` images of every class, seeded, in class order."""
    rng = np.random.default_rng(seed)
    picks = []
    for k in np.unique(labels):
        (idx,) = np.nonzero(labels == k)
        picks.extend(np.sort(rng.choice(idx, min(per_class, len(idx)), replace=False)))
    return np.asarray(picks, dtype=np.int64)


def color_panels(images: np.ndarray, data: DataConfig, extract: bool = True) -> dict[str, np.ndarray]:
    """Columns of uint8 pictures, by title: original, mask (white on black), the cell crop
    (when data.cell_crop is on) and, with ``extract``, the colour-extraction image."""
    mask = color_mask(images, data.color).numpy()
    panels = {"original": images, "mask": np.repeat(mask[..., None].astype(np.uint8) * 255, 3, axis=-1)}
    seen = images
    if data.cell_crop is not None:
        seen = panels["cell crop"] = cut_cell(images, data.color, data.cell_crop).numpy()
    if extract:
        panels["extracted"] = extract_colors(seen, data.color).numpy()
    return panels


def plot_color_extraction(
    images: np.ndarray, labels: np.ndarray, class_names: list[str], data: DataConfig, path: Path, extract: bool = True
) -> Path:
    """A PNG with one row per sample and one column per :func:`color_panels` picture."""
    panels = color_panels(images, data, extract)
    fig, axes = plt.subplots(len(images), len(panels), figsize=(2.5 * len(panels), 1.9 * len(images)), squeeze=False)
    for col, (title, column) in enumerate(panels.items()):
        for row, (panel, label) in enumerate(zip(column, labels)):
            ax = axes[row, col]
            ax.imshow(panel, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(title)
            if col == 0:
                ax.set_ylabel(class_names[label], fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def log_color_extraction(split, class_names: list[str], data: DataConfig, run_dir: Path, seed: int = 0) -> None:
    """What the cell crop and colour extraction do to real training images, for a run
    folder: a PNG (``color_extraction.png``) and the same pictures as TensorBoard images
    (``logs/color_extraction``)."""
    import tensorflow as tf

    picks = sample_images(split.images, split.labels, per_class=2, seed=seed)
    images, labels = split.images[picks], split.labels[picks]
    extract = data.color_extraction
    plot_color_extraction(images, labels, class_names, data, run_dir / "color_extraction.png", extract)
    with tf.summary.create_file_writer(str(run_dir / "logs" / "color_extraction")).as_default():
        for title, column in color_panels(images, data, extract).items():
            tag = f"color_extraction/{title.replace(' ', '_')}"
            tf.summary.image(tag, column, step=0, max_outputs=len(column))


# ----------------------------------------------------------------------------- Grad-CAM


def overlay_heatmap(image: np.ndarray, cam: np.ndarray, alpha: float = 0.4) -> np.ndarray:
    """uint8 ``[H, W, 3]`` with a ``[0, 1]`` map ``[H, W]`` over it in the jet colours
    (as keras-io's Grad-CAM example shows it)."""
    colours = matplotlib.colormaps["jet"](np.clip(cam, 0.0, 1.0))[..., :3] * 255.0
    return np.clip((1.0 - alpha) * image + alpha * colours, 0, 255).astype(np.uint8)


def plot_explanation(image: np.ndarray, cam: np.ndarray, caption: str, path: Target) -> Target:
    """One image: what the model saw, and the Grad-CAM map over it."""
    fig, axes = plt.subplots(1, 2, figsize=(6, 3.4))
    for ax, panel, title in ((axes[0], image, "model input"), (axes[1], overlay_heatmap(image, cam), "Grad-CAM")):
        ax.imshow(panel, interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.suptitle(caption, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_cam_grid(images, cams, captions: list[str], path: Target, title: str = "", columns: int = 5) -> Target:
    """:func:`plot_image_grid` of the images with their Grad-CAM maps overlaid."""
    import textwrap

    overlays = np.asarray([overlay_heatmap(image, cam) for image, cam in zip(images, cams)])
    title = "\n".join(textwrap.fill(line, 130) for line in title.split("\n"))
    return plot_image_grid(overlays, captions, path, title, columns)
