"""Encoded image files held per split, decoded and resized into a source's uint8 arrays:
what the two file-based sources (blood_cell_images, image_folder) share."""

from __future__ import annotations

import numpy as np

from keras_blood.data.base import Split
from keras_blood.data.prepared import read_only

RESIZE_METHOD = "area"  # averages whole pixel blocks: the cleanest large downscale


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
    """Decode and resize image files' bytes in a parallel tf.data map: uint8 ``[N, H, W, 3]``."""
    import tensorflow as tf

    def load(data):
        image = tf.io.decode_image(data, channels=3, expand_animations=False)
        image = tf.image.resize(image, size, method=RESIZE_METHOD)
        return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)

    ds = tf.data.Dataset.from_tensor_slices(tf.constant(encoded, dtype=tf.string))
    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    batches = [np.zeros((0, *size, 3), np.uint8)]
    batches += list(ds.batch(512).as_numpy_iterator())
    return np.concatenate(batches)
