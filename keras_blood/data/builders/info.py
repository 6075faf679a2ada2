"""What both builders share: metadata that never looks at TFDS's bucket, the manual folder."""

from __future__ import annotations

import os
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
