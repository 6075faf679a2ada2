"""The uint8 -> uint8 steps a config puts before the model: cell crop, stain normalisation,
colour extraction. :func:`make_preprocess` chains them; the tf.data pipelines and the
exported serving graph both call it, so training and serving see the same pixels."""

from __future__ import annotations

from collections.abc import Callable

import tensorflow as tf

from keras_blood.config.schema import DataConfig
from keras_blood.preparation.cell_crop import cut_cell
from keras_blood.preparation.color import extract_colors
from keras_blood.preparation.stain_vectors import normalize_macenko

# Target of stain normalisation: per channel, mean and standard deviation in uint8 units.
NORMAL_MEAN, NORMAL_STD = 160.0, 40.0


def normalize_stain(images: tf.Tensor, mode: str = "channels") -> tf.Tensor:
    """uint8 ``[N, H, W, 3]`` -> uint8: each image standardised to one mean and spread
    (NORMAL_MEAN, NORMAL_STD), so that a pinker stain or a brighter lamp look alike while
    the contrasts inside the cell stay. ``channels``: R, G and B each; ``grey``: the luma
    (ITU-R BT.601 weights), repeated in the three channels; ``white_balance``: each channel
    to one mean, but one spread for the three together, so that a faint channel is not
    stretched to the others' contrast (the stain's own hue and saturation stay); ``macenko``:
    each image's own two stains found and redrawn as one reference pair
    (:mod:`keras_blood.preparation.stain_vectors`)."""
    if mode == "macenko":
        return normalize_macenko(images)
    x = tf.cast(images, tf.float32)
    if mode == "grey":
        x = tf.tile(tf.reduce_sum(x * [0.299, 0.587, 0.114], axis=-1, keepdims=True), [1, 1, 1, 3])
    mean = tf.reduce_mean(x, axis=[1, 2], keepdims=True)
    spread_axes = [1, 2, 3] if mode == "white_balance" else [1, 2]
    std = tf.sqrt(tf.reduce_mean(tf.square(x - mean), axis=spread_axes, keepdims=True))
    x = NORMAL_MEAN + NORMAL_STD * (x - mean) / tf.maximum(std, 1.0)
    return tf.cast(tf.clip_by_value(tf.round(x), 0, 255), tf.uint8)


def make_preprocess(data: DataConfig) -> Callable | None:
    """The batch-wise uint8 -> uint8 preprocessing ``data`` asks for, or None.

    The cell crop first (it finds the cell on the whole image), then colour extraction on
    what the model will see, so kernel sizes are in the model's pixels. Used by the
    tf.data pipelines and by the exported serving graph alike, so training and serving
    see the same pixels.
    """
    steps: list[Callable] = []
    if data.cell_crop is not None:
        steps.append(lambda images: cut_cell(images, data.color, data.cell_crop))
    if data.stain_normalize != "none":
        steps.append(lambda images: normalize_stain(images, data.stain_normalize))
    if data.color_extraction:
        steps.append(lambda images: extract_colors(images, data.color))
    if not steps:
        return None

    def preprocess(images):
        for step in steps:
            images = step(images)
        return images

    return preprocess
