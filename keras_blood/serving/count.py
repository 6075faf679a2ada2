"""A differential count from smear fields: every white cell found
(:func:`keras_blood.preparation.finder.find_cells`), cut out in a capture-like window,
classified by a published version; then the tables, a row a cell and a row a sample.

A version was trained on captures of one cell: a PBC capture, a Kaggle field, a lab's
crop. Each found cell is given such a capture (:func:`capture_window`): a window centred on
its box, of the version's input aspect, the box's longer side ``cell_fraction`` (0.4) of
the window's shorter side, as BCCD's white cells are in its fields (the Kaggle images). That window goes
the way a capture goes through the serving graph: the version's recipe (its centre crop and
resize, :func:`keras_blood.preparation.decode.prepare`), then ``serving_default``, whose
graph does the rest (the cell crop, stain normalisation, colour extraction, test-time views).
A version's ``serving_fields`` signature does all of it in one graph, cutting by the same
window (:mod:`keras_blood.serving.fields_signature`).

The percentages of a sample come with a 95% Wilson interval (scipy's ``binomtest``): a
100-cell differential with 5 monocytes says 5% (2.2% to 11.2%); fewer than
:data:`MIN_COUNTED` cells are flagged.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tensorflow as tf

from keras_blood.errors import DataError
from keras_blood.preparation.decode import decode_file, preparer
from keras_blood.preparation.finder import CellBox, FinderConfig, find_cells
from keras_blood.serving.capture_window import field_fill, window_cutter, window_geometry
from keras_blood.serving.count_request import CELL_FRACTION, Field
from keras_blood.serving.predict import shown
from keras_blood.serving.version import ExportedVersion

# A manual differential counts 100 cells; a count of fewer is flagged (its intervals are wide).
MIN_COUNTED = 100

# Fields waiting for their cells' batch hold at most about this many pixels: large fields
# with few cells each go on before a batch is full.
MAX_HELD_PIXELS = 50_000_000


@dataclass
class CountedField:
    """One field's cells: boxes, capture-like windows and the version's probabilities."""

    field: Field
    image: np.ndarray  # uint8 RGB [H, W, 3]
    boxes: list[CellBox]
    windows: list[np.ndarray]
    probabilities: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))  # [cells, classes]


def read_field(path: str) -> np.ndarray:
    """A field's pixels, decoded by the rule every reader follows (``predict``'s too); a
    DataError (one line) for a file that is not a readable image."""
    try:
        return decode_file(Path(path).read_bytes()).numpy()
    except OSError as exc:
        raise DataError(f"{shown(path)}: cannot read it ({exc.strerror or exc}); remove it from the count") from None
    except (ValueError, tf.errors.OpError) as exc:
        raise DataError(f"{shown(path)}: {exc}; remove it from the count") from None


def window_shape(box: CellBox, frame: tuple[int, int], cell_fraction: float = CELL_FRACTION) -> tuple[int, int]:
    """``(height, width)`` of the capture-like window around ``box``: ``frame``'s aspect
    (the version's input height and width), its shorter side the box's longer side over
    ``cell_fraction`` (:func:`keras_blood.serving.capture_window.window_geometry`)."""
    _, _, height, width = window_geometry(_corners(box), frame, cell_fraction)
    return int(height), int(width)


def capture_window(
    image: np.ndarray | tf.Tensor,
    box: CellBox,
    frame: tuple[int, int],
    cell_fraction: float = CELL_FRACTION,
    fill: np.ndarray | tf.Tensor | None = None,
) -> np.ndarray:
    """uint8 ``[h, w, 3]``: the window of :func:`window_shape` centred on ``box`` in
    ``image``, ``fill`` past the field's edge (default: the field's median colour), cut by
    :func:`keras_blood.serving.capture_window.cut_window`, as the ``serving_fields``
    signature cuts it."""
    image = tf.convert_to_tensor(image, tf.uint8)
    if fill is None:
        fill = field_fill(image)
    elif not isinstance(fill, tf.Tensor):
        fill = np.clip(np.round(np.asarray(fill, np.float64)), 0, 255).astype(np.uint8)
    return window_cutter(frame, cell_fraction)(image, _corners(box), fill).numpy()


def _corners(box: CellBox) -> tf.Tensor:
    return tf.constant([box.xmin, box.ymin, box.xmax, box.ymax], tf.int32)


def count_fields(
    version: ExportedVersion,
    fields: Sequence[Field],
    batch_size: int = 64,
    cell_fraction: float = CELL_FRACTION,
    finder: FinderConfig | None = None,
) -> Iterator[CountedField]:
    """Every field of ``fields``, in order, with its cells found and classified.

    Windows are classified ``batch_size`` at a time, across fields; a field is given back
    once all its cells are, so that only a batch's fields are held in memory."""
    # serving_default on the windows prepared here, not serving_bytes on encoded windows:
    # serving_bytes decodes a file and runs this same prepare() in its graph, so the pixels
    # are the same as those of a window saved losslessly (PNG) and sent as bytes
    # (tests/commands/test_count.py checks it), without encoding and decoding every window; and
    # JPEG, the fast encoding, would change them.
    prepare = preparer(version.preparation)
    frame = version.preparation.size
    pending: list[CountedField] = []
    waiting = 0  # cells in pending

    def classified() -> Iterator[CountedField]:
        pixels = [prepare(window).numpy() for counted in pending for window in counted.windows]
        batches = [
            version.serve(pixels=tf.constant(np.stack(pixels[start : start + batch_size])))["probabilities"].numpy()
            for start in range(0, len(pixels), batch_size)
        ]
        probabilities = np.concatenate(batches) if batches else np.zeros((0, len(version.class_names)), np.float32)
        start = 0
        for counted in pending:
            counted.probabilities = probabilities[start : start + len(counted.boxes)].reshape(
                len(counted.boxes), len(version.class_names)
            )
            start += len(counted.boxes)
            yield counted

    held = 0  # pixels of the fields in pending
    for item in fields:
        image = read_field(item.path)
        boxes = find_cells(image, finder)
        windows = []
        if boxes:
            pixels = tf.convert_to_tensor(image)  # once a field, not once a cell
            fill = field_fill(pixels)
            windows = [capture_window(pixels, box, frame, cell_fraction, fill) for box in boxes]
        pending.append(CountedField(item, image, boxes, windows))
        waiting += len(boxes)
        held += image.shape[0] * image.shape[1]
        if waiting >= batch_size or held >= MAX_HELD_PIXELS:
            yield from classified()
            pending, waiting, held = [], 0, 0
    yield from classified()


# ----------------------------------------------------------------------------- tables


def cell_header(classes: Sequence[str]) -> list[str]:
    return ["file", "sample", "xmin", "ymin", "xmax", "ymax", "edge", "label", "probability", *classes]


def cell_rows(counted: CountedField, classes: Sequence[str]) -> list[list[str]]:
    """``cells.csv``'s rows of one field: a row a cell, in the finder's order."""
    rows = []
    for box, p in zip(counted.boxes, counted.probabilities):
        k = int(np.argmax(p))
        corners = (box.xmin, box.ymin, box.xmax, box.ymax)
        rows.append(
            [
                shown(counted.field.path),
                shown(counted.field.sample),
                *map(str, corners),
                "true" if box.edge else "false",
                classes[k],
                f"{p[k]:.6f}",
                *(f"{v:.6f}" for v in p),
            ]
        )
    return rows


def wilson_interval(count: int, total: int, level: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval of the proportion ``count / total`` (scipy's); ``(nan,
    nan)`` where nothing was counted."""
    from scipy.stats import binomtest

    if total == 0:
        return math.nan, math.nan
    interval = binomtest(count, total).proportion_ci(level, method="wilson")
    return float(interval.low), float(interval.high)


@dataclass(frozen=True)
class SampleCount:
    """One sample's differential: the cells of each class among those counted."""

    sample: str
    fields: int
    found: int  # every cell found, edge cells included
    edge: int  # cells cut by a field's edge
    counts: dict[str, int]  # per class, of the cells counted
    edge_counted: bool = False  # whether the edge cells are among those counted

    @property
    def counted(self) -> int:
        return sum(self.counts.values())

    @property
    def few(self) -> bool:
        return self.counted < MIN_COUNTED

    def percent(self, name: str) -> float:
        return 100.0 * self.counts[name] / self.counted if self.counted else math.nan

    def interval(self, name: str) -> tuple[float, float]:
        """The 95% Wilson interval of the class's percentage."""
        low, high = wilson_interval(self.counts[name], self.counted)
        return 100.0 * low, 100.0 * high


class SampleTally:
    """The cells of each sample as the fields come, for :class:`SampleCount`."""

    def __init__(self, classes: Sequence[str], count_edge_cells: bool = False):
        self.classes, self.count_edge_cells = list(classes), count_edge_cells
        self.fields: Counter[str] = Counter()
        self.found: Counter[str] = Counter()
        self.edge: Counter[str] = Counter()
        self.labels: dict[str, Counter[str]] = {}

    def counts(self, box: CellBox) -> bool:
        """Whether a cell is counted: one cut by the field's edge only with ``count_edge_cells``."""
        return self.count_edge_cells or not box.edge

    def add(self, counted: CountedField) -> None:
        sample = counted.field.sample
        self.fields[sample] += 1
        labels = self.labels.setdefault(sample, Counter())
        for box, p in zip(counted.boxes, counted.probabilities):
            self.found[sample] += 1
            self.edge[sample] += box.edge
            if self.counts(box):
                labels[self.classes[int(np.argmax(p))]] += 1

    def samples(self) -> list[SampleCount]:
        """Every sample, in the order its first field came."""
        return [
            SampleCount(
                sample,
                self.fields[sample],
                self.found[sample],
                self.edge[sample],
                {name: labels[name] for name in self.classes},
                self.count_edge_cells,
            )
            for sample, labels in self.labels.items()
        ]


def sample_header(classes: Sequence[str]) -> list[str]:
    per_class = [f"{name}_{what}" for name in classes for what in ("count", "percent", "ci_low", "ci_high")]
    return ["sample", "fields", "cells_found", "edge_cells", "cells_counted", *per_class, f"fewer_than_{MIN_COUNTED}"]


def sample_row(count: SampleCount, classes: Sequence[str]) -> list[str]:
    """``samples.csv``'s row of a sample: percentages and their intervals in percent, two
    decimals; empty where no cell was counted."""

    def number(value: float) -> str:
        return "" if math.isnan(value) else f"{value:.2f}"

    per_class = []
    for name in classes:
        low, high = count.interval(name)
        per_class += [str(count.counts[name]), number(count.percent(name)), number(low), number(high)]
    row = [shown(count.sample), str(count.fields), str(count.found), str(count.edge), str(count.counted)]
    return [*row, *per_class, "true" if count.few else "false"]
