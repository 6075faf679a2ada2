"""A lab's own images: ``data.name: image_folder``, ``data.root`` a folder of class folders
or a CSV/TSV list (the layouts: :mod:`keras_blood.data.folders`), read through the TFDS
builder ``image_folder`` (keras_blood.data.builders.image_folder), prepared once in
``data.tfds_dir`` and again when the files change.

The folder is listed, and a bad one reported, before TensorFlow starts. Images of any size
are decoded and resized (``area``, the whole image, no crop) to ``data.image_size`` in a
parallel tf.data map; ``data.max_examples`` is applied before decoding.
"""

from __future__ import annotations

import functools

import numpy as np

from keras_blood.config.schema import DataConfig
from keras_blood.data import register
from keras_blood.data.base import DataBundle, Split
from keras_blood.data.builders.image_folder import make_config
from keras_blood.data.decoded import RESIZE_METHOD, decode_splits
from keras_blood.data.folders import fingerprint, source_listing
from keras_blood.data.prepared import prepared_builder, read_all, stamp

SPLITS = {"train": "train", "validation": "val", "test": "test"}


@register("image_folder")
def load_image_folder(config: DataConfig, seed: int = 0) -> DataBundle:
    listing = source_listing(config, seed)
    root = config.given_root()
    print(f"Data: {root}: {listing.counts()}", flush=True)
    current = fingerprint(root.expanduser(), listing)
    builder_config = make_config(root, tuple(config.classes or ()), config.class_aliases, config.group_pattern,
                                 config.val_fraction, config.test_fraction, seed, config.skip_unreadable)  # fmt: skip
    builder = prepared_builder(
        "image_folder",
        builder_config,
        tfds_dir=config.resolved_tfds_dir(),
        manual_dir=root if root.is_dir() else root.parent,
        accept=lambda meta: meta.get("source_fingerprint") == current,
        check=lambda: None,  # listed above
    )
    splits, class_names = _load(builder.data_dir, stamp(builder.data_dir), config.max_examples, seed,
                                config.height_width, str(listing.root))  # fmt: skip
    height, width = config.height_width
    return DataBundle("image_folder", class_names, splits, preparation={"resize": [height, width], "method": RESIZE_METHOD})


@functools.lru_cache(maxsize=2)
def _load(data_dir: str, _stamp: int, max_examples, seed: int, size: tuple[int, int], root: str):
    """``(splits, class names)`` of a prepared copy, decoded at ``size``; memoised per process."""
    import tensorflow_datasets as tfds

    builder, rows = read_all(data_dir, list(SPLITS), decoders={"image": tfds.decode.SkipDecoding()})
    class_names = list(builder.info.features["label"].names)
    encoded = DataBundle("image_folder", class_names, {
        SPLITS[name]: Split(r["image"], r["label"].astype(np.int32), np.array([f"{root}/{f.decode()}" for f in r["file"]], dtype=str))
        for name, r in rows.items()
    }).capped(max_examples, seed)  # fmt: skip
    return decode_splits(encoded.splits, size), class_names
