"""The uint8 -> uint8 steps a config puts before the model: cell crop, stain normalisation,
colour extraction. :func:`make_preprocess` chains them; the tf.data pipelines and the
exported serving graph both call it, so training and serving see the same pixels."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import tensorflow as tf

from keras_blood.config.schema import DataConfig
from keras_blood.preparation.cell_crop import cut_cell
from keras_blood.preparation.color import extract_colors
from keras_blood.preparation.stain_vectors import normalize_macenko

# Target of stain normalisation: per channel, mean and standard deviation in uint8 units.
NORMAL_MEAN, NORMAL_STD = 160.0, 40.0


# Reinhard et al. 2001, "Color transfer between images": linear RGB to LMS cone responses,
# then their logarithms to l (achromatic), alpha (yellow-blue) and beta (red-green), three
# nearly uncorrelated axes.
RGB_TO_LMS = np.array([[0.3811, 0.5783, 0.0402], [0.1967, 0.7244, 0.0782], [0.0241, 0.1288, 0.8444]], np.float32)
LOG_LMS_TO_LAB = (
    np.diag([1 / np.sqrt(3), 1 / np.sqrt(6), 1 / np.sqrt(2)]) @ np.array([[1, 1, 1], [1, 1, -2], [1, -1, 0]])
).astype(np.float32)
# The reference each image is moved to: per-image mean and spread of l, alpha and beta,
# averaged over BloodMNIST's white-cell training images (the PBC lab's stain and lamp).
REINHARD_MEAN = np.array([-0.334, -0.0253, 0.0131], np.float32)
REINHARD_STD = np.array([0.274, 0.103, 0.00683], np.float32)


def normalize_reinhard(images: tf.Tensor) -> tf.Tensor:
    """uint8 ``[N, H, W, 3]`` -> uint8: Reinhard colour transfer, each image's mean and
    spread of l, alpha and beta moved to the reference's (REINHARD_MEAN, REINHARD_STD)."""
    rgb = tf.maximum(tf.cast(images, tf.float32), 1.0) / 255.0
    log_lms = tf.math.log(tf.maximum(tf.einsum("bhwc,kc->bhwk", rgb, RGB_TO_LMS), 1e-4)) / np.log(10.0)
    lab = tf.einsum("bhwk,jk->bhwj", log_lms, LOG_LMS_TO_LAB)
    mean, variance = tf.nn.moments(lab, axes=[1, 2], keepdims=True)
    lab = REINHARD_MEAN + REINHARD_STD * (lab - mean) / tf.maximum(tf.sqrt(variance), 1e-3)
    lms = tf.pow(10.0, tf.einsum("bhwj,kj->bhwk", lab, np.linalg.inv(LOG_LMS_TO_LAB).astype(np.float32)))
    rgb = tf.einsum("bhwk,ck->bhwc", lms, np.linalg.inv(RGB_TO_LMS).astype(np.float32))
    return tf.cast(tf.clip_by_value(tf.round(255.0 * rgb), 0, 255), tf.uint8)


def normalize_stain(images: tf.Tensor, mode: str = "channels") -> tf.Tensor:
    """uint8 ``[N, H, W, 3]`` -> uint8: each image standardised to one mean and spread
    (NORMAL_MEAN, NORMAL_STD), so that a pinker stain or a brighter lamp look alike while
    the contrasts inside the cell stay. ``channels``: R, G and B each; ``grey``: the luma
    (ITU-R BT.601 weights), repeated in the three channels; ``white_balance``: each channel
    to one mean, but one spread for the three together, so that a faint channel is not
    stretched to the others' contrast (the stain's own hue and saturation stay); ``macenko``:
    each image's own two stains found and redrawn as one reference pair
    (:mod:`keras_blood.preparation.stain_vectors`); ``reinhard``: :func:`normalize_reinhard`."""
    if mode == "macenko":
        return normalize_macenko(images)
    if mode == "reinhard":
        return normalize_reinhard(images)
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
