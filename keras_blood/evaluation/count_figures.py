"""The figures of a differential count: a field with its cells boxed and labelled, and a
sample's percentages with their 95% Wilson intervals."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers or in CI

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from keras_blood.evaluation.plots import Target  # noqa: E402
from keras_blood.preparation.finder import CellBox  # noqa: E402
from keras_blood.serving.count import SampleCount  # noqa: E402

EDGE_GREY = (150, 150, 150)  # a cell cut by the field's edge, not counted by default
DASH = 8  # pixels of a dash and of the gap after it, in an edge cell's box


def class_colours(classes: Sequence[str]) -> dict[str, tuple[int, int, int]]:
    """A colour a class (uint8 RGB), from matplotlib's tab10: told apart at a glance."""
    palette = plt.get_cmap("tab10").colors
    return {name: tuple(int(255 * c) for c in palette[i % len(palette)]) for i, name in enumerate(classes)}


def _dashed_rectangle(image: np.ndarray, corners: tuple[int, int, int, int], colour, thickness: int) -> None:
    import cv2

    x0, y0, x1, y1 = corners
    for (ax, ay), (bx, by) in (((x0, y0), (x1, y0)), ((x1, y0), (x1, y1)), ((x1, y1), (x0, y1)), ((x0, y1), (x0, y0))):
        length = max(abs(bx - ax), abs(by - ay))
        for start in range(0, length + 1, 2 * DASH):
            end = min(start + DASH, length)
            a = (ax + (bx - ax) * start // max(length, 1), ay + (by - ay) * start // max(length, 1))
            b = (ax + (bx - ax) * end // max(length, 1), ay + (by - ay) * end // max(length, 1))
            cv2.line(image, a, b, colour, thickness)


def annotate_field(
    image: np.ndarray,
    boxes: Sequence[CellBox],
    labels: Sequence[str],
    probabilities: Sequence[float],
    counted: Sequence[bool],
    classes: Sequence[str],
) -> np.ndarray:
    """A copy of the field (uint8 RGB) with each cell's box and ``label probability``: in its
    class's colour where it is counted, dashed and grey where it is not (cut by the edge)."""
    import cv2

    out = np.ascontiguousarray(image.copy())
    colours = class_colours(classes)
    scale = max(out.shape[:2]) / 640  # lines and text of one look on a 640x480 field and a larger one
    thickness = max(1, round(2 * scale))
    font = 0.5 * max(scale, 0.5)
    for box, label, probability, is_counted in zip(boxes, labels, probabilities, counted):
        corners = (box.xmin, box.ymin, box.xmax, box.ymax)
        colour = colours[label] if is_counted else EDGE_GREY
        if is_counted:
            cv2.rectangle(out, corners[:2], corners[2:], colour, thickness)
        else:
            _dashed_rectangle(out, corners, colour, thickness)
        text = f"{label} {probability:.2f}" + ("" if is_counted else " (edge)")
        (width, height), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font, thickness)
        y = box.ymin - thickness if box.ymin - height - base - thickness >= 0 else box.ymax + height + thickness
        x = min(max(box.xmin, 0), max(out.shape[1] - width, 0))
        cv2.rectangle(out, (x, y - height - base), (x + width, y + base), colour, -1)
        cv2.putText(out, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, font, (255, 255, 255), thickness, cv2.LINE_AA)
    return out


def plot_sample_count(count: SampleCount, classes: Sequence[str], path: Target, min_counted: int) -> Target:
    """A bar a class: its percentage of the sample's counted cells, the 95% Wilson interval
    as the error bar; the title says how many cells, and warns under ``min_counted``."""
    percents = np.array([count.percent(name) if count.counted else 0.0 for name in classes])
    intervals = np.array([count.interval(name) if count.counted else (0.0, 0.0) for name in classes])
    errors = np.abs(np.stack([percents - intervals[:, 0], intervals[:, 1] - percents]))
    colours = class_colours(classes)
    fig, ax = plt.subplots(figsize=(1.1 * len(classes) + 3, 4.2))
    positions = np.arange(len(classes))
    ax.bar(positions, percents, color=[np.array(colours[name]) / 255 for name in classes])
    ax.errorbar(positions, percents, yerr=errors, fmt="none", ecolor="black", capsize=5, linewidth=1)
    ax.set_xticks(positions, [f"{name} ({count.counts[name]})" for name in classes], rotation=30, ha="right")
    ax.set_ylabel("% of cells counted (95% Wilson interval)")
    ax.set_ylim(0, 100)
    ax.grid(axis="y", alpha=0.3)
    title = f"{count.sample}: {count.counted} cells counted in {count.fields} fields"
    if count.edge:
        title += f" ({count.edge} cut by an edge, {'counted' if count.edge_counted else 'left out'})"
    if count.counted < min_counted:
        title += f"\nfewer than {min_counted} cells: the intervals are wide"
    ax.set_title(title, fontsize=10, color="black" if count.counted >= min_counted else "darkred")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
