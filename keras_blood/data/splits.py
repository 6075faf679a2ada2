"""The split names: keras-blood's and the TFDS builders', in one place."""

from __future__ import annotations

# keras-blood's splits, in the order they are listed and counted.
SPLITS = ("train", "val", "test")
# keras-blood's split -> the TFDS builders' (TFDS's convention: "validation").
TFDS_SPLITS = {"train": "train", "val": "validation", "test": "test", "test_simple": "test_simple"}
# A TFDS builder's split -> keras-blood's.
FROM_TFDS = {tfds_name: name for name, tfds_name in TFDS_SPLITS.items()}
