"""What the builders share: metadata that never looks at TFDS's bucket, the manual folder,
and the check that every file decodes (by the one rule, :mod:`keras_blood.preparation.decode`)
and is not too large to (:mod:`keras_blood.preparation.limits`)."""

from __future__ import annotations

import os
from pathlib import Path

import tensorflow_datasets as tfds

from keras_blood.preparation.limits import MAX_PIXELS, too_many_pixels

# How a training run's line says to raise the limit (data.max_pixels).
RAISE_THE_CAP = "--set data.max_pixels=N raises it"


class LocalDatasetInfo(tfds.core.DatasetInfo):
    """A DatasetInfo that never asks TFDS's Google Cloud bucket for precomputed metadata.

    These data sets are not on the bucket. TFDS asks it every time a builder is made for an
    unprepared data set (where GCS access is switched on, a network call that hangs
    offline: tensorflow/datasets#2833, #3962), and makes an empty temporary folder each
    time whether it is switched on or not.
    """

    def initialize_from_bucket(self) -> None:
        pass


def manual_folder(dl_manager: tfds.download.DownloadManager) -> Path | None:
    """The manual folder, or None where there is none or it is empty."""
    try:
        return Path(os.fspath(dl_manager.manual_dir))
    except AssertionError:  # TFDS's way of saying "missing or empty"
        return None


def unreadable(paths: list[str], max_pixels: int = MAX_PIXELS, opencv: bool = False) -> list[int]:
    """Indices of the files that are not read: those whose header says they have more than
    ``max_pixels`` pixels (never decoded), then those the one decode rule does not read
    (:mod:`keras_blood.preparation.decode`; a parallel tf.data pass). ``opencv``: TIFF and
    the BMPs TensorFlow does not decode are read (through OpenCV), as by a source that
    converts them; without it they are not, as by a source that keeps files' bytes."""
    import tensorflow as tf

    from keras_blood.preparation.decode import decode, decode_any

    over = [i for i, path in enumerate(paths) if too_many_pixels(path, max_pixels)]
    rest = sorted(set(range(len(paths))) - set(over))
    read = decode_any if opencv else decode

    def decodes(path, index):
        image = read(tf.io.read_file(path))
        return index, tf.shape(image)  # an unused decode would be pruned from the graph

    ds = tf.data.Dataset.from_tensor_slices(
        (tf.constant([paths[i] for i in rest], tf.string), tf.constant(rest, tf.int64))
    )
    # A file that fails to read or decode is dropped here, so missing from `kept`.
    ds = ds.map(decodes, num_parallel_calls=tf.data.AUTOTUNE).ignore_errors()
    kept = {int(i) for batch, _ in ds.batch(1024).as_numpy_iterator() for i in batch}
    return [i for i in range(len(paths)) if i not in kept]


def why_unreadable(path: str, max_pixels: int = MAX_PIXELS, opencv: bool = False) -> str:
    """Why :func:`unreadable` leaves ``path`` out, in a few words (the same as ``predict``'s
    error row for it)."""
    reason = too_many_pixels(path, max_pixels, RAISE_THE_CAP)
    if reason:
        return reason
    from keras_blood.preparation.decode import decode_file

    try:
        decode_file(Path(path).read_bytes(), opencv=opencv)
    except OSError as exc:
        return exc.strerror or str(exc)
    except ValueError as exc:
        return str(exc)
    return "decoding failed"
