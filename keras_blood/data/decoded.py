"""Encoded image files held per split, decoded and resized into a source's uint8 arrays:
what the two file-based sources (blood_cell_images, image_folder) share."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from keras_blood.data.base import DataBundle, Split
from keras_blood.data.prepared import read_all, read_only
from keras_blood.data.splits import FROM_TFDS

RESIZE_METHOD = "area"  # averages whole pixel blocks: the cleanest large downscale


@functools.lru_cache(maxsize=2)
def encoded_splits(data_dir: str, _stamp: int) -> tuple[list[str], dict[str, Split]]:
    """``(class names, splits)`` of a prepared copy of image files, without decoding: each
    Split's images are the files' bytes, its files the paths relative to the folder it was
    prepared from. Memoised per process and copy (``_stamp``: :func:`prepared.stamp`)."""
    import tensorflow_datasets as tfds

    builder, rows = read_all(data_dir, list(FROM_TFDS), decoders={"image": tfds.decode.SkipDecoding()})
    splits = {
        FROM_TFDS[name]: Split(
            r["image"], r["label"].astype(np.int32), np.array([f.decode() for f in r["file"]], dtype=str)
        )
        for name, r in rows.items()
    }
    return list(builder.info.features["label"].names), splits


@functools.lru_cache(maxsize=2)
def load_decoded(data_dir: str, _stamp: int, max_examples: int | None, seed: int, size: tuple[int, int], root: str):
    """``(splits, class names)`` of a prepared copy of image files, ``max_examples`` a split
    drawn (seeded) before decoding, decoded at ``size``, each file's path under ``root``.
    Memoised per process, so a sweep that trains many models on the same data decodes it once."""
    class_names, encoded = encoded_splits(data_dir, _stamp)
    capped = DataBundle("encoded", class_names, encoded).capped(max_examples, seed)
    located = {
        name: Split(split.images, split.labels, np.array([str(Path(root) / f) for f in split.files], dtype=str))
        for name, split in capped.splits.items()
    }
    return decode_splits(located, size), list(class_names)


def decode_splits(encoded: dict[str, Split], size: tuple[int, int]) -> dict[str, Split]:
    """``encoded`` (each Split's images the files' bytes) decoded at ``size``, in one tf.data
    pass for all splits; the arrays are read-only, since callers memoise them."""
    order = list(encoded)
    images = decode_images(np.concatenate([encoded[name].images for name in order]), size)
    bounds = np.cumsum([0] + [len(encoded[name]) for name in order])
    return {
        name: Split(read_only(images[start:end]), read_only(encoded[name].labels), read_only(encoded[name].files))
        for name, start, end in zip(order, bounds[:-1], bounds[1:])
    }


def decode_images(encoded: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Decode and resize image files' bytes in a parallel tf.data map: uint8 ``[N, H, W, 3]``.
    Decoded by the one rule (:func:`keras_blood.preparation.decode.decode`) that checked
    them when the copy was prepared, so what was kept there reads here."""
    import tensorflow as tf

    from keras_blood.preparation.decode import decode

    def load(data):
        image = decode(data)
        image = tf.image.resize(image, size, method=RESIZE_METHOD)
        return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)

    ds = tf.data.Dataset.from_tensor_slices(tf.constant(encoded, dtype=tf.string))
    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    batches = [np.zeros((0, *size, 3), np.uint8)]
    batches += list(ds.batch(512).as_numpy_iterator())
    return np.concatenate(batches)
