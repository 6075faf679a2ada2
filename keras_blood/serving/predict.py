"""Classify image files with an exported model version.

    python -m keras_blood.predict saved_models/dropout03/1 cell.jpg scans/ "more/**/*.png" [--output out.csv]

PATHs are files, folders (searched recursively for .jpg/.jpeg/.png/.tif/.tiff/.bmp/.gif)
and glob patterns. Each image, of any size, is prepared as the model's training data was
made, by the recipe recorded at export time (:mod:`keras_blood.preparation`, the same
function the ``serving_bytes`` signature runs), then classified by ``serving_default``.

Files stream through a tf.data pipeline that reads, decodes and prepares several at a
time while the model classifies the batch before (:func:`prepared_batches`), so memory
stays bounded however many there are. Each file gets a table row on screen and a CSV row
(``path,label,probability,<one column per class>,error``), in input order; a file that
cannot be read gets its error and the others go on. Bytes of a file name that are not
valid UTF-8 are shown as ``\\xNN`` escapes (``bad\\xff.jpg``; see :func:`shown`). The
CSV appears only when complete; ``--output`` refuses an existing file unless
``--overwrite`` is given. An image whose header says it has more than ``--max-pixels``
pixels (default :data:`~keras_blood.preparation.decode.MAX_PIXELS`, 50 million) is not
decoded and gets an error row, so that one small file of huge dimensions cannot take
gigabytes of memory. Exit status: 0 all files classified, 1 some failed, 2 a usage
error (nothing was classified). The last line printed is the CSV's path.
"""

from __future__ import annotations

import contextlib
import csv
import itertools
import os
import stat
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

import numpy as np
import tensorflow as tf

from keras_blood.errors import KerasBloodError
from keras_blood.files import Stage, new_file, staging
from keras_blood.preparation.decode import MAX_PIXELS, decode_any, decode_file, prepare, preparer, too_many_pixels
from keras_blood.serving.request import check_request
from keras_blood.serving.version import load_version

# A file is read whole before decoding (a few at once); this bounds what one bad input can take.
MAX_FILE_BYTES = 1 << 30
PATH_WIDTH = 60  # screen table only; the CSV has full paths


class Progress:
    """A progress bar on stderr: redrawn in place on a terminal, a line per 10% in logs."""

    def __init__(self, total: int, stream: TextIO | None = None):
        # sys.stderr when the bar is made, not when this module was imported: it may have
        # been replaced since (a caller capturing it, a test).
        self.total, self.stream = total, stream or sys.stderr
        self.live = self.stream.isatty()
        self.last_tenth = -1

    def update(self, done: int, failed: int) -> None:
        width = 30
        filled = width * done // max(self.total, 1)
        text = f"[{'#' * filled}{'.' * (width - filled)}] {done}/{self.total} files, {failed} failed"
        if self.live:
            self.stream.write(f"\r{text}")
        elif 10 * done // max(self.total, 1) > self.last_tenth:
            self.last_tenth = 10 * done // max(self.total, 1)
            self.stream.write(f"{text}\n")
        self.stream.flush()

    def clear(self) -> None:
        if self.live:  # so that table rows on stdout do not land on the bar's line
            self.stream.write("\r\033[K")
            self.stream.flush()


def short(path: str, width: int = PATH_WIDTH) -> str:
    return path if len(path) <= width else "..." + path[-(width - 3) :]


def shown(path: str) -> str:
    """``path`` as text for the CSV and the screen. Python holds the bytes of a name that
    is not valid UTF-8 as lone surrogates, which no text file can hold; they are shown as
    ``\\xNN`` escapes of those bytes instead (``bad\\xff.jpg``). Other names are unchanged."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def unreadable(path: str, max_pixels: int = MAX_PIXELS, option: str = "") -> str:
    """Why ``path`` is not to be read at all (no regular file, too large, more than
    ``max_pixels`` pixels by its header, ``option`` the one that sets that), or ""."""
    try:
        info = os.stat(path)
    except OSError as exc:
        return exc.strerror or str(exc)
    if not stat.S_ISREG(info.st_mode):  # a FIFO or a device would block or never end
        return "not a regular file"
    if info.st_size > MAX_FILE_BYTES:
        return f"larger than {MAX_FILE_BYTES >> 20} MiB"
    return too_many_pixels(path, max_pixels, option)


def prepared_batches(entries: Sequence[tuple[str, str]], preparation, batch_size: int):
    """A tf.data pipeline of ``(indices, pixels)`` batches: the ``entries`` without an error,
    read, decoded and prepared several files at a time, in order, a few batches ahead.

    A file that fails there is left out of its batch (a gap in ``indices``): per-element
    errors have no message in tf.data, so the caller reads that file again to say why.
    """
    todo = [(i, os.fsencode(path)) for i, (path, error) in enumerate(entries) if not error]
    indices = tf.constant([i for i, _ in todo], tf.int64)
    paths = tf.constant([path for _, path in todo], tf.string)
    dataset = tf.data.Dataset.from_tensor_slices((indices, paths)).map(
        lambda i, path: (i, prepare(decode_any(tf.io.read_file(path)), preparation)),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    return dataset.ignore_errors().batch(batch_size).prefetch(tf.data.AUTOTUNE)


def prepared_files(entries: Sequence[tuple[str, str]], preparation, batch_size: int = 64):
    """``(pixels, "")`` or ``(None, error)`` for every entry, in order: the files read,
    decoded and prepared by :func:`prepared_batches`, and each file that it left out read
    again alone, the slow way, which says what is wrong with it (never an exception)."""
    prepare = preparer(preparation)

    def again(index: int):
        path, error = entries[index]
        if error:
            return None, error
        try:
            return prepare(decode_file(Path(path).read_bytes())).numpy(), ""  # failed there, reads now
        except OSError as exc:
            return None, exc.strerror or str(exc)
        except (ValueError, tf.errors.OpError) as exc:
            return None, str(exc)

    done = 0
    for indices, pixels in prepared_batches(entries, preparation, batch_size):
        for index, image in zip(indices.numpy(), pixels.numpy()):
            yield from map(again, range(done, index))
            yield image, ""
            done = index + 1
    yield from map(again, range(done, len(entries)))


def predict(
    version_dir: str | Path,
    inputs: Sequence[str],
    output: Path | None = None,
    batch_size: int = 64,
    out: TextIO | None = None,
    overwrite: bool = False,
    max_pixels: int = MAX_PIXELS,
) -> tuple[Path, int]:
    """Classify ``inputs``; returns the CSV's path and how many files failed. A file whose
    header says it has more than ``max_pixels`` pixels is not decoded: its row says so.

    The CSV is written to a hidden temporary file beside ``output`` and renamed into place
    when complete, so a crash leaves no partial CSV. An existing ``output`` is replaced
    only with ``overwrite``.
    """
    out = out or sys.stdout  # the one at call time: it may have been replaced since import
    entries = check_request(version_dir, inputs, output, overwrite)
    entries = [(path, error or unreadable(path, max_pixels, "--max-pixels")) for path, error in entries]
    version = load_version(version_dir)
    progress = Progress(len(entries))

    # Written under a hidden name beside the CSV and renamed when complete.
    folder = Path("predictions") if output is None else output.parent
    with contextlib.ExitStack() as cleanup:  # the staged CSV goes unless it was published
        stage, csv_file = staged_csv(folder, output, cleanup)
        with csv_file as f:
            failed = write_predictions(version, entries, csv.writer(f), batch_size, out, progress)
        try:
            if output is None:  # claimed only now, so that it exists only once complete
                output = new_file(folder, f"{version.name}-v{version.number}-", ".csv")
            stage.publish(output)
        except OSError as exc:
            raise KerasBloodError(f"cannot write the CSV {output or folder}: {exc.strerror or exc}") from None
    progress.clear()
    print(f"{len(entries) - failed} of {len(entries)} files classified, {failed} failed", file=out)
    return output, failed


def staged_csv(folder: Path, output: Path | None, cleanup: contextlib.ExitStack) -> tuple[Stage, TextIO]:
    """A hidden staging file in ``folder`` for the CSV, and that file open for writing; it
    is removed when ``cleanup`` closes unless it was published."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        staged_name = f".{output.name if output else 'predictions'}."
        stage = cleanup.enter_context(staging(folder, prefix=staged_name, suffix=".part"))
        return stage, stage.path.open("w", newline="", encoding="utf-8")
    except OSError as exc:
        raise KerasBloodError(f"cannot write a CSV in {folder}: {exc.strerror or exc}") from None


def write_predictions(version, entries, writer, batch_size: int, out: TextIO, progress: Progress) -> int:
    """Classify ``entries`` a batch at a time, in order: a CSV row through ``writer`` and a
    table row on ``out`` for each file. Returns how many failed."""
    classes = version.class_names
    width = min(PATH_WIDTH, max(len(shown(path)) for path, _ in entries))
    label_width = max(len("label"), *(len(name) for name in classes))
    failed = 0
    print(f"{'path':<{width}}  {'label':<{label_width}}  probability", file=out)
    writer.writerow(["path", "label", "probability", *classes, "error"])
    rows = zip(entries, prepared_files(entries, version.preparation, batch_size))
    for start in range(0, len(entries), batch_size):
        chunk = list(itertools.islice(rows, batch_size))
        good = [pixels for _, (pixels, _) in chunk if pixels is not None]
        probs = iter(version.serve(pixels=np.stack(good))["probabilities"].numpy() if good else [])
        progress.clear()
        for (path, _), (pixels, error) in chunk:
            p = None if pixels is None else next(probs)
            name = shown(path)
            if p is None:
                failed += 1
                writer.writerow([name, "", "", *([""] * len(classes)), error])
                print(f"{short(name, width):<{width}}  {'-':<{label_width}}  error: {error}", file=out)
                continue
            k = int(np.argmax(p))
            writer.writerow([name, classes[k], f"{p[k]:.6f}", *(f"{v:.6f}" for v in p), ""])
            print(f"{short(name, width):<{width}}  {classes[k]:<{label_width}}  {p[k]:11.4f}", file=out)
        out.flush()
        progress.update(start + len(chunk), failed)
    return failed
