"""The folder a differential count writes (``python -m keras_blood.count``):

    cells.csv                      a row a cell found: file, sample, box, edge, label, probabilities
    samples.csv                    a row a sample: cells counted, count, percentage and 95% Wilson
                                   interval per class, and a flag under 100 cells
    fields/<field>.jpg             each field, its cells boxed and labelled (edge cells dashed, grey)
    samples/<sample>.png           each sample's percentages with their intervals
    review/<class>/<p>_<field>_<i>.png
                                   each counted cell's window under its predicted class, ``p`` its
                                   probability (four decimals): in name order, the least certain first

``review/`` is a labelled image_folder source: the wrong crops moved to their right class
folders, a config trains on it (``--set data.root=DIR/review``). Its crops are the windows
the version classified, before its recipe's resize, so a model trained on them sees cells
framed as it will see them in the next count. Edge cells, not counted by default, are not
filed there: half a cell is a poor training example.

The folder is written under a hidden staging name beside ``output`` and renamed into place
when complete; a crash or a bad field leaves nothing. An existing folder that holds files is
replaced only with ``overwrite`` (the command refuses it otherwise).
"""

from __future__ import annotations

import contextlib
import csv
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from keras_blood.errors import DataError, KerasBloodError
from keras_blood.files import new_folder, staging
from keras_blood.preparation.limits import MAX_PIXELS
from keras_blood.serving.count import (
    CELL_FRACTION,
    MIN_COUNTED,
    CountedField,
    SampleCount,
    SampleTally,
    cell_header,
    cell_rows,
    count_fields,
    sample_header,
    sample_row,
)
from keras_blood.serving.count_request import Field, safe_name, unique_names
from keras_blood.serving.predict import Progress, shown, unreadable
from keras_blood.serving.version import load_version

DEFAULT_PARENT = Path("counts")  # where a count goes without --output: counts/<name>-v<version>-<timestamp>


def review_name(probability: float, field_name: str, index: int) -> str:
    """A review crop's file name: name order is certainty order (``0.4123_field_0.png``
    before ``0.9100_field_2.png``), and the field and the cell's index in it tell which cell."""
    return f"{probability:.4f}_{field_name}_{index}.png"


def class_folder(name: str) -> str:
    """A class's folder in ``review/``: its name as image_folder reads it back (case,
    spaces, ``_`` and ``-`` are matched loosely), a separator or a leading dot replaced."""
    folder = name.replace("/", "_").replace("\\", "_").lstrip(".")
    return folder if folder.strip() else safe_name(name)


def _save(image, path: Path) -> None:
    """uint8 RGB as a PNG (fastest zlib level: the crops are training data, kept lossless)
    or a JPEG (the annotated fields, to look at), by ``path``'s suffix."""
    import cv2

    options = [cv2.IMWRITE_PNG_COMPRESSION, 1] if path.suffix == ".png" else [cv2.IMWRITE_JPEG_QUALITY, 90]
    ok, encoded = cv2.imencode(path.suffix, image[..., ::-1], options)  # OpenCV takes BGR
    if not ok:
        raise OSError(f"cannot encode {path.name}")
    path.write_bytes(encoded.tobytes())


def _write_field(stage: Path, counted: CountedField, classes: Sequence[str], tally: SampleTally) -> None:
    import numpy as np

    from keras_blood.evaluation.count_figures import annotate_field

    labels = [classes[int(np.argmax(p))] for p in counted.probabilities]
    top = [float(np.max(p)) for p in counted.probabilities]
    counts = [tally.counts(box) for box in counted.boxes]
    drawn = annotate_field(counted.image, counted.boxes, labels, top, counts, classes)
    _save(drawn, stage / "fields" / f"{counted.field.name}.jpg")
    for index, (window, label, probability, is_counted) in enumerate(zip(counted.windows, labels, top, counts)):
        if is_counted:
            folder = stage / "review" / class_folder(label)
            folder.mkdir(exist_ok=True)  # only classes with a crop: an empty class folder fails training
            _save(window, folder / review_name(probability, counted.field.name, index))


def _publish(stage, output: Path) -> None:
    """Rename the staged folder to ``output``; a folder there that holds files (the caller
    was given overwrite) is moved aside first and removed once the new one is in place."""
    if not (output.is_dir() and any(output.iterdir())):
        stage.publish(output)
        return
    with staging(output.parent, prefix=f".{output.name}.replaced.", folder=True) as old:
        os.rename(output, old.path)  # onto the empty staged folder: atomic
        try:
            stage.publish(output)
        except OSError:
            os.rename(old.path, output)
            raise


def summary_line(count: SampleCount, classes: Sequence[str]) -> str:
    parts = [
        f"{name} {count.counts[name]} ({count.percent(name):.1f}%)" if count.counted else f"{name} 0"
        for name in classes
    ]
    few = f" [fewer than {MIN_COUNTED}]" if count.few else ""
    return f"{shown(count.sample)}: {count.counted} cells counted{few}; " + ", ".join(parts)


def write_count(
    version_dir: str | Path,
    fields: Sequence[Field],
    output: Path | None = None,
    overwrite: bool = False,
    batch_size: int = 64,
    max_pixels: int = MAX_PIXELS,
    count_edge_cells: bool = False,
    cell_fraction: float = CELL_FRACTION,
    out: TextIO | None = None,
) -> Path:
    """Count the white cells of ``fields`` (:func:`~keras_blood.serving.count_request.check_count_request`'s)
    with the version and write the count's folder (the module's docstring lists it); returns
    its path. A field that cannot be read, or whose header says it has more than
    ``max_pixels`` pixels, is a DataError naming it, and nothing is written."""
    out = out or sys.stdout  # the one at call time: it may have been replaced since import
    for item in fields:  # every file checked before the first is counted: no count stops half-way
        why = unreadable(item.path, max_pixels, "--max-pixels")
        if why:
            raise DataError(f"{shown(item.path)}: {why}; remove it from the count")
    if output is not None and output.exists() and any(output.iterdir()) and not overwrite:
        raise KerasBloodError(f"--output {output} is not empty; pass --overwrite to replace it, or name a new folder")
    version = load_version(version_dir)
    classes = version.class_names
    parent = DEFAULT_PARENT if output is None else output.parent
    with contextlib.ExitStack() as cleanup:
        try:
            parent.mkdir(parents=True, exist_ok=True)
            prefix = f".{output.name if output else 'count'}."
            stage = cleanup.enter_context(staging(parent, prefix=prefix, suffix=".part", folder=True))
            for sub in ("fields", "samples", "review"):
                (stage.path / sub).mkdir()
            cells_file = (stage.path / "cells.csv").open("w", newline="", encoding="utf-8")
        except OSError as exc:
            raise KerasBloodError(f"cannot write a count in {parent}: {exc.strerror or exc}") from None
        tally = SampleTally(classes, count_edge_cells)
        progress = Progress(len(fields))
        try:
            with cells_file:
                writer = csv.writer(cells_file)
                writer.writerow(cell_header(classes))
                for done, counted in enumerate(count_fields(version, fields, batch_size, cell_fraction), start=1):
                    writer.writerows(cell_rows(counted, classes))
                    _write_field(stage.path, counted, classes, tally)
                    tally.add(counted)
                    progress.update(done, 0)
            samples = tally.samples()
            _write_samples(stage.path, samples, classes)
        except OSError as exc:  # a full disk: the staged folder goes, nothing is published
            raise KerasBloodError(f"cannot write a count in {parent}: {exc.strerror or exc}") from None
        finally:
            progress.clear()  # a bad field's line starts a line of its own
        try:
            if output is None:  # claimed only now, so that it exists only once complete
                output = new_folder(parent, f"{version.name}-v{version.number}-")
            _publish(stage, output)
        except OSError as exc:
            raise KerasBloodError(f"cannot write the count {output or parent}: {exc.strerror or exc}") from None
    for count in samples:
        print(summary_line(count, classes), file=out)
    return output


def _write_samples(stage: Path, samples: Sequence[SampleCount], classes: Sequence[str]) -> None:
    from keras_blood.evaluation.count_figures import plot_sample_count

    with (stage / "samples.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(sample_header(classes))
        writer.writerows(sample_row(count, classes) for count in samples)
    for count, name in zip(samples, unique_names([count.sample for count in samples])):
        plot_sample_count(count, classes, stage / "samples" / f"{name}.png", MIN_COUNTED)
