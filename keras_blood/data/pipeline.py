"""tf.data input pipelines: [preprocess,] cache, seeded shuffle, batch, one-hot labels, prefetch.

Images stay uint8 until the model: the cache holds a quarter of the bytes that float32
would, and the model's own first layers do the scaling, exactly as in the exported graph.
"""

from __future__ import annotations

from collections.abc import Callable

import tensorflow as tf

from keras_blood.data.base import Split


def make_dataset(
    split: Split,
    num_classes: int,
    batch_size: int,
    *,
    training: bool,
    seed: int,
    shuffle_buffer: int = 20_000,
    augment: Callable | None = None,
    preprocess: Callable[[tf.Tensor], tf.Tensor] | None = None,
    preprocess_batch: int = 256,
) -> tf.data.Dataset:
    """``preprocess``: a deterministic, batch-wise uint8 -> uint8 function (colour
    extraction). It runs before the cache, so its cost is paid once, not every epoch."""
    ds = tf.data.Dataset.from_tensor_slices((split.images, split.labels))
    if preprocess is not None:
        ds = (
            ds.batch(preprocess_batch)
            .map(
                lambda images, labels: (preprocess(images), labels),
                num_parallel_calls=tf.data.AUTOTUNE,
                deterministic=True,
            )
            .unbatch()
        )
        # unbatch() forgets the length; Keras warns "ran out of data" each epoch without it.
        ds = ds.apply(tf.data.experimental.assert_cardinality(len(split)))
    ds = ds.cache()
    if training:
        # Seeded, reshuffled each epoch: runs with one seed see batches in one order.
        ds = ds.shuffle(min(shuffle_buffer, len(split)), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)
    ds = ds.map(
        lambda images, labels: (tf.cast(images, tf.float32), tf.one_hot(labels, num_classes)),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    if training and augment is not None:
        # After batching: one vectorised call per batch instead of one per image.
        ds = ds.map(augment, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)
