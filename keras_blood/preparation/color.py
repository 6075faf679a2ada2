"""Colour extraction (the Georgetown study) in TensorFlow ops, and the colour mask the cell
crop (:mod:`keras_blood.preparation.cell_crop`) searches.

The white cell's nucleus and granules are stained purple/red and strongly saturated; red
cells are a pale pink and the background is near white. So an HSV threshold finds the
white cell, an optional morphological opening drops specks (platelets, noise), a dilation
grows the mask over the cytoplasm around the nucleus, everything outside the mask is set to
``background``, and a Gaussian blur smooths the result, as the paper describes.

Everything here is TensorFlow ops only, vectorised over a batch of uint8 images, so it
runs in tf.data map functions and inside the exported serving graph
(:func:`keras_blood.preparation.steps.make_preprocess` is what both call), and only ops
that LiteRT's builtins and ONNX have, so that the graph converts to both
(:mod:`keras_blood.serving.edge`). Thresholds follow OpenCV's 8-bit HSV convention (hue
0-179, saturation and value 0-255), and the RGB->HSV conversion reproduces OpenCV's
fixed-point arithmetic, so masks agree bit for bit with the OpenCV reference in
:mod:`keras_blood.preparation.opencv_reference`.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from keras_blood.config.schema import ColorConfig

# OpenCV's RGB2HSV for 8-bit images divides in 12-bit fixed point through lookup tables
# (color_hsv.simd.hpp): s = (diff * round((255 << 12) / v) + 2048) >> 12, and hue alike
# with round((180 << 12) / (6 * diff)). The same arithmetic here makes our hue and
# saturation identical to OpenCV's.
_SHIFT = 12


def _fixed_point_reciprocal(numerator: int, divisor: tf.Tensor) -> tf.Tensor:
    """round(numerator / divisor) for int32 divisors 1..255 (0 for 0), as OpenCV's tables.

    Computed in float32 rather than gathered from a table: on CPU a gather costs far more
    than an elementwise op (docs/benchmarks.md). It is exact: the float32 error, below numerator / divisor *
    2^-24 < 0.07 / divisor, is smaller than the 1 / (2 * divisor) by which any quotient
    here misses a rounding boundary (and none is a tie).
    """
    quotient = numerator / tf.cast(tf.maximum(divisor, 1), tf.float32)
    return tf.where(divisor > 0, tf.cast(tf.round(quotient), tf.int32), 0)


def _hsv_planes(images: tf.Tensor):
    """uint8 RGB ``[..., 3]`` -> int32 ``(h, s, v)``, each ``[...]``, on OpenCV's 8-bit scale."""
    # Channel planes: one transpose of the uint8 input is much cheaper than slicing the
    # innermost axis three times (or reducing over it) in int32.
    rank = images.shape.rank
    r, g, b = tf.unstack(tf.cast(tf.transpose(images, [rank - 1, *range(rank - 1)]), tf.int32))
    v = tf.maximum(tf.maximum(r, g), b)
    diff = v - tf.minimum(tf.minimum(r, g), b)
    half = 1 << (_SHIFT - 1)
    # Arithmetic right shifts, as in C (and much cheaper than integer division).
    s = tf.bitwise.right_shift(diff * _fixed_point_reciprocal(255 << _SHIFT, v) + half, _SHIFT)
    # OpenCV's branch order: red is the maximum first, then green, then blue.
    h = tf.where(v == r, g - b, tf.where(v == g, b - r + 2 * diff, r - g + 4 * diff))
    h = tf.bitwise.right_shift(h * _fixed_point_reciprocal((180 << _SHIFT) // 6, diff) + half, _SHIFT)
    h = tf.where(h < 0, h + 180, h)
    return h, s, v


def rgb_to_hsv_opencv(images: tf.Tensor) -> tf.Tensor:
    """uint8 RGB ``[..., 3]`` -> int32 HSV ``[..., 3]`` on OpenCV's 8-bit scale (H 0-179)."""
    return tf.stack(_hsv_planes(tf.convert_to_tensor(images, tf.uint8)), axis=-1)


def _in_range(channel, low: int, high: int, top: int):
    """``low <= channel <= high``, leaving out a comparison that the range ``0..top`` of
    the channel makes always true (each one is a pass over the whole batch)."""
    checks = ([channel >= low] if low > 0 else []) + ([channel <= high] if high < top else [])
    if not checks:
        return tf.ones_like(channel, tf.bool)
    return checks[0] if len(checks) == 1 else tf.logical_and(*checks)


def color_mask(images: tf.Tensor, cfg: ColorConfig) -> tf.Tensor:
    """The white-cell mask: bool ``[N, H, W]`` for uint8 RGB ``[N, H, W, 3]``."""
    images = tf.convert_to_tensor(images, tf.uint8)
    hue, sat, val = _hsv_planes(images)
    (h_lo, h_hi), (s_lo, s_hi), (v_lo, v_hi) = cfg.hue, cfg.saturation, cfg.value
    if h_lo <= h_hi:
        hue_ok = _in_range(hue, h_lo, h_hi, 179)
    else:  # the range wraps through red (hue 179 -> 0)
        hue_ok = tf.logical_or(hue >= h_lo, hue <= h_hi)
    mask = hue_ok & _in_range(sat, s_lo, s_hi, 255) & _in_range(val, v_lo, v_hi, 255)

    # Morphology as max pooling over a k x k window (stride 1, SAME). Pooling ignores the
    # padding, which matches OpenCV's default border for erode and dilate.
    m = tf.cast(mask, tf.float32)[..., None]
    if cfg.open_size > 1:
        k = cfg.open_size
        m = -tf.nn.max_pool2d(-m, k, 1, "SAME")  # erode
        m = tf.nn.max_pool2d(m, k, 1, "SAME")  # dilate
    if cfg.dilate_size > 1:
        m = tf.nn.max_pool2d(m, cfg.dilate_size, 1, "SAME")
    return m[..., 0] > 0.5


def gaussian_kernel(size: int, sigma: float) -> np.ndarray:
    """The 1-D kernel cv2.getGaussianKernel(size, sigma) returns for sigma > 0."""
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2
    kernel = np.exp(-(x**2) / (2 * sigma**2))
    return (kernel / kernel.sum()).astype(np.float32)


def gaussian_blur(images: tf.Tensor, size: int, sigma: float) -> tf.Tensor:
    """Separable Gaussian blur of float ``[N, H, W, C]`` with OpenCV's default border
    (BORDER_REFLECT_101, which is tf.pad's REFLECT)."""
    if size <= 1:
        return images
    kernel = gaussian_kernel(size, sigma)
    # Plain conv2d with a diagonal channel matrix: on CPU, oneDNN runs it faster than
    # depthwise_conv2d, for the same result (docs/benchmarks.md).
    eye = np.eye(images.shape[-1], dtype=np.float32)
    rows = kernel[:, None, None, None] * eye[None, None]  # [size, 1, C, C]
    cols = kernel[None, :, None, None] * eye[None, None]  # [1, size, C, C]
    pad = size // 2
    x = tf.pad(images, [[0, 0], [pad, pad], [pad, pad], [0, 0]], mode="REFLECT")
    x = tf.nn.conv2d(x, rows, 1, "VALID")
    return tf.nn.conv2d(x, cols, 1, "VALID")


def extract_colors(images: tf.Tensor, cfg: ColorConfig, return_mask: bool = False):
    """uint8 RGB ``[N, H, W, 3]`` -> uint8 colour-extraction images of the same shape.

    Pure TensorFlow; with ``return_mask`` also the bool mask ``[N, H, W]``.
    """
    images = tf.convert_to_tensor(images, tf.uint8)
    mask = color_mask(images, cfg)
    # Selected in float32, which the blur takes anyway: LiteRT has no uint8 select.
    kept = tf.where(mask[..., None], tf.cast(images, tf.float32), float(cfg.background))
    blurred = gaussian_blur(kept, cfg.blur_size, cfg.blur_sigma)
    out = tf.cast(tf.clip_by_value(tf.round(blurred), 0, 255), tf.uint8)
    return (out, mask) if return_mask else out
