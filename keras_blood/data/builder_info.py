"""What the builders share: metadata that never looks at TFDS's bucket, the manual folder,
and the check that every file decodes."""

from __future__ import annotations

import os
import re
from pathlib import Path

import tensorflow_datasets as tfds


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


def unreadable(paths: list[str]) -> list[int]:
    """Indices of the files TensorFlow cannot decode as an image (parallel tf.data pass)."""
    import tensorflow as tf

    def decodes(path, index):
        image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        return index, tf.shape(image)  # an unused decode would be pruned from the graph

    ds = tf.data.Dataset.from_tensor_slices((list(paths), tf.range(len(paths), dtype=tf.int64)))
    # A file that fails to read or decode is dropped here, so missing from `kept`.
    ds = ds.map(decodes, num_parallel_calls=tf.data.AUTOTUNE).ignore_errors()
    kept = {int(i) for batch, _ in ds.batch(1024).as_numpy_iterator() for i in batch}
    return [i for i in range(len(paths)) if i not in kept]


def why_unreadable(path: str) -> str:
    import tensorflow as tf

    try:
        tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
    except Exception as exc:  # tf raises several types; the message is what matters
        message = str(getattr(exc, "message", exc)).strip().splitlines()[0]
        # "{{function_node ...}} jpeg::Uncompress failed. Invalid JPEG data ... [Op:DecodeImage] name:"
        return re.sub(r"^\{\{.*?\}\}\s*|\s*\[Op:.*$", "", message) or message
    return "decoding failed"
