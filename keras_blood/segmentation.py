"""Cell preparation in TensorFlow ops: colour extraction (Georgetown study) and the cell crop.

The white cell's nucleus and granules are stained purple/red and strongly saturated; red
cells are a pale pink and the background is near white. So an HSV threshold finds the
white cell, an optional morphological opening drops specks (platelets, noise), a dilation
grows the mask over the cytoplasm around the nucleus, everything outside the mask is set to
``background``, and a Gaussian blur smooths the result, as the paper describes. The cell
crop cuts a window around the densest stained blob.

Everything here is TensorFlow ops only, vectorised over a batch of uint8 images, so it
runs in tf.data map functions and inside the exported serving graph (:func:`make_preprocess`
is what both call), and only ops that LiteRT's builtins and ONNX have, so that the graph
converts to both (:mod:`keras_blood.export_edge`). Thresholds follow OpenCV's 8-bit HSV
convention (hue 0-179, saturation and value 0-255), and the RGB->HSV conversion reproduces
OpenCV's fixed-point arithmetic, so masks agree bit for bit with the OpenCV reference in :mod:`keras_blood.opencv_reference`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
import tensorflow as tf

from keras_blood.config import CellCropConfig, ColorConfig, DataConfig

# OpenCV's RGB2HSV for 8-bit images divides in 12-bit fixed point through lookup tables
# (color_hsv.simd.hpp): s = (diff * round((255 << 12) / v) + 2048) >> 12, and hue alike
# with round((180 << 12) / (6 * diff)). The same arithmetic here makes our hue and
# saturation identical to OpenCV's.
_SHIFT = 12


def _fixed_point_reciprocal(numerator: int, divisor: tf.Tensor) -> tf.Tensor:
    """round(numerator / divisor) for int32 divisors 1..255 (0 for 0), as OpenCV's tables.

    Computed in float32 rather than gathered from a table: a gather costs ~10x an
    elementwise op on CPU. It is exact: the float32 error, below numerator / divisor *
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
    # depthwise_conv2d, for the same result.
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


def cell_centres(images: tf.Tensor, cfg: ColorConfig, window: int, mask: tf.Tensor | None = None) -> tf.Tensor:
    """int32 ``[N, 2]`` (row, column) of the white cell in uint8 RGB ``[N, H, W, 3]``.

    The peak of the colour mask smoothed by a Gaussian (sigma an eighth of ``window``):
    a smooth density has one clear peak in the middle of the largest stained blob (a box
    sum would have a flat top and an arbitrary corner of it), and small specks (platelets,
    stained debris) weigh little. An image with no stained pixel gives its centre.
    ``mask``: :func:`color_mask` of ``images`` where the caller has it already.
    """
    density = tf.cast(color_mask(images, cfg) if mask is None else mask, tf.float32)[..., None]
    kernel = gaussian_kernel(2 * (window // 4) + 1, max(window / 8, 1.0))
    # Separable, zero-padded ("SAME"): the world past the edge holds no cell.
    density = tf.nn.conv2d(density, kernel.reshape(-1, 1, 1, 1), 1, "SAME")
    density = tf.nn.conv2d(density, kernel.reshape(1, -1, 1, 1), 1, "SAME")
    height, width = images.shape[1], images.shape[2]
    flat = tf.reshape(density, [-1, height * width])
    peak = tf.argmax(flat, axis=1, output_type=tf.int32)
    centre = tf.stack([peak // width, peak % width], axis=1)
    found = tf.reduce_max(flat, axis=1) > 0
    return tf.where(found[:, None], centre, tf.constant([[height // 2, width // 2]]))


def crop_to_cell(images: tf.Tensor, color: ColorConfig, crop: CellCropConfig) -> tf.Tensor:
    """uint8 RGB ``[N, H, W, 3]`` -> uint8 ``[N, crop.size, crop.size, 3]``: the window
    around each image's white cell (:func:`cell_centres`), resized if its side is not
    ``crop.size``."""
    images = tf.convert_to_tensor(images, tf.uint8)
    height, width = images.shape[1], images.shape[2]
    side = crop.window_side(height, width)
    # The window's pixels, gathered from the images' pixels plus one of the background
    # colour, which every position past an edge takes: an exact cut in ops that LiteRT has
    # (not crop_and_resize, nor a uint8 pad), as fast as crop_and_resize, and one gather of
    # whole pixels is faster than a batched gather per axis. (crop_and_resize, in
    # normalised coordinates, also lost the image's last row or column to round-off.)
    top_left = cell_centres(images, color, side) - side // 2  # [N, 2]
    offsets = tf.range(side)
    rows = top_left[:, :1] + offsets  # [N, side]
    cols = top_left[:, 1:] + offsets
    inside = ((rows >= 0) & (rows < height))[:, :, None] & ((cols >= 0) & (cols < width))[:, None, :]
    first = tf.range(tf.shape(images)[0]) * (height * width)  # each image's first pixel
    index = first[:, None, None] + rows[:, :, None] * width + cols[:, None, :]  # [N, side, side]
    pixels = tf.reshape(images, [-1, 3])
    background = tf.fill([1, 3], tf.constant(color.background, tf.uint8))
    outside = tf.shape(pixels)[0]  # the index of the background pixel
    windows = tf.gather(tf.concat([pixels, background], 0), tf.where(inside, index, outside))
    if side == crop.size:
        return windows
    # Antialiased bilinear resize (tf.image.resize's weights) as matrix products on
    # [N, C, side, side]: the ScaleAndTranslate op that tf.image.resize becomes converts to
    # neither format. The same pixels but for float rounding (at most 1 level, on under
    # 0.1% of values), and twice as fast on CPU.
    weights = tf.constant(_resize_weights(side, crop.size))  # [size, side]
    planes = tf.transpose(tf.cast(windows, tf.float32), [0, 3, 1, 2])
    resized = tf.matmul(tf.matmul(weights, planes), weights, transpose_b=True)
    resized = tf.transpose(resized, [0, 2, 3, 1])
    return tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8)


@functools.lru_cache(maxsize=None)
def _resize_weights(side: int, size: int) -> np.ndarray:
    """``[size, side]``: row i holds the weights that an antialiased bilinear
    ``tf.image.resize`` from ``side`` to ``size`` pixels gives each input pixel for output
    pixel i (the resize of each one-hot column, computed eagerly by TensorFlow itself)."""
    with tf.init_scope():
        basis = tf.reshape(tf.eye(side), [1, side, 1, side])  # pixel j is 1 in channel j
        resized = tf.image.resize(basis, (size, 1), method="bilinear", antialias=True)
        return resized.numpy().reshape(size, side)


# The stained area that sizes an extent crop is counted within this fraction of the shorter
# side around the cell's centre: wide enough for a cell that fills most of the frame, narrow
# enough that a second cell at the far edge of a Kaggle image counts little.
EXTENT_REACH = 0.8
# An extent window stays within these fractions of the shorter side, whatever the mask says
# (an image with almost no stain, or one stained all over).
EXTENT_LIMITS = (0.25, 1.0)


def _near_mask(images, centres, mask):
    """float32 ``[N, H, W]``: the colour ``mask``, bool ``[N, H, W]``, within the square of side ``EXTENT_REACH`` of
    the shorter side around each centre, and the row and column offsets from the centre."""
    height, width = images.shape[1], images.shape[2]
    half = EXTENT_REACH * min(height, width) / 2
    rows = tf.cast(tf.range(height)[None, :, None] - centres[:, 0, None, None], tf.float32)
    cols = tf.cast(tf.range(width)[None, None, :] - centres[:, 1, None, None], tf.float32)
    near = tf.logical_and(tf.abs(rows) <= half, tf.abs(cols) <= half)
    return tf.cast(tf.logical_and(mask, near), tf.float32), rows, cols


def extent_sides(
    images: tf.Tensor, centres: tf.Tensor, color: ColorConfig, scale: float, aspect: bool = False, mask=None
):
    """float32 ``[N, 2]``: each window's height and width, ``scale`` x sqrt(stained pixels
    in the square of side ``EXTENT_REACH`` of the shorter side around each centre), clipped
    to ``EXTENT_LIMITS``. With ``aspect``, the window takes the stain's own aspect ratio
    (the ratio of its spreads along rows and columns, within 2:3 and 3:2) at the same area,
    so an image squeezed or stretched on its way in is cut back to round cells. ``mask``:
    :func:`color_mask` of ``images`` where the caller has it already."""
    height, width = images.shape[1], images.shape[2]
    mask, rows, cols = _near_mask(images, centres, color_mask(images, color) if mask is None else mask)
    area = tf.reduce_sum(mask, axis=[1, 2])
    low, high = (limit * min(height, width) for limit in EXTENT_LIMITS)
    side = tf.clip_by_value(scale * tf.sqrt(area), low, high)
    if not aspect:
        return tf.stack([side, side], axis=1)

    def spread(offsets):
        mean = tf.reduce_sum(mask * offsets, axis=[1, 2]) / tf.maximum(area, 1.0)
        return tf.reduce_sum(mask * tf.square(offsets - mean[:, None, None]), axis=[1, 2]) / tf.maximum(area, 1.0)

    # sqrt of the ratio of standard deviations = fourth root of the variances' ratio.
    stretch = tf.clip_by_value(tf.pow((spread(rows) + 1.0) / (spread(cols) + 1.0), 0.25), (2 / 3) ** 0.5, 1.5**0.5)
    return tf.stack([side * stretch, side / stretch], axis=1)


def crop_to_cell_extent(images: tf.Tensor, color: ColorConfig, crop: CellCropConfig) -> tf.Tensor:
    """Like :func:`crop_to_cell`, but each image's window is sized by its own cell
    (:func:`extent_sides`): a cell photographed 1.5x larger gets a 1.5x larger window, so
    the model sees cells at one scale. uint8 ``[N, H, W, 3]`` -> ``[N, size, size, 3]``."""
    images = tf.convert_to_tensor(images, tf.uint8)
    height, width = images.shape[1], images.shape[2]
    mask = color_mask(images, color)  # computed once, for the centre and the extent alike
    centres = cell_centres(images, color, crop.window_side(height, width), mask)
    half = (extent_sides(images, centres, color, crop.extent_scale, crop.extent_aspect, mask) - 1) / 2
    # Bilinear samples at size x size points spanning each window, as crop_and_resize takes
    # them, written as two matrix products per image ([size, H] x [H, W] x [W, size]): ops
    # that LiteRT and ONNX have (CropAndResize converts to neither). A sample past an edge
    # takes the background colour, as crop_and_resize's extrapolation_value.
    steps = tf.range(crop.size, dtype=tf.float32) / max(crop.size - 1, 1)  # [size]
    start = tf.cast(centres, tf.float32) - half  # [N, 2]
    rows = _sample_weights(start[:, 0, None] + 2 * half[:, 0, None] * steps, height)  # [N, size, H]
    cols = _sample_weights(start[:, 1, None] + 2 * half[:, 1, None] * steps, width)  # [N, size, W]
    planes = tf.transpose(tf.cast(images, tf.float32), [0, 3, 1, 2])  # [N, 3, H, W]
    windows = tf.matmul(tf.matmul(rows[:, None], planes), cols[:, None], transpose_b=True)  # [N, 3, size, size]
    inside = tf.reduce_sum(rows, axis=2)[:, :, None] * tf.reduce_sum(cols, axis=2)[:, None, :]  # 1 or 0
    windows = tf.transpose(windows, [0, 2, 3, 1]) + float(color.background) * (1.0 - inside)[..., None]
    return tf.cast(tf.clip_by_value(tf.round(windows), 0, 255), tf.uint8)


def _sample_weights(positions: tf.Tensor, length: int) -> tf.Tensor:
    """float32 ``[N, size, length]``: row i weighs the pixels that linear interpolation at
    ``positions[:, i]`` reads (the two around it, by distance), all zero past either end."""
    low = tf.floor(positions)
    frac = (positions - low)[..., None]
    low = tf.cast(low, tf.int32)[..., None]
    high = tf.minimum(low + 1, length - 1)  # at the last pixel both reads are that pixel
    pixels = tf.range(length)[None, None, :]
    weights = tf.cast(tf.equal(pixels, low), tf.float32) * (1.0 - frac) + tf.cast(tf.equal(pixels, high), tf.float32) * frac
    inside = tf.logical_and(positions >= 0.0, positions <= float(length - 1))[..., None]
    return tf.where(inside, weights, 0.0)


def cut_cell(images: tf.Tensor, color: ColorConfig, crop: CellCropConfig) -> tf.Tensor:
    """The cell crop ``crop.fit`` asks for."""
    return (crop_to_cell_extent if crop.fit == "extent" else crop_to_cell)(images, color, crop)


# Target of stain normalisation: per channel, mean and standard deviation in uint8 units.
NORMAL_MEAN, NORMAL_STD = 160.0, 40.0


def normalize_stain(images: tf.Tensor, mode: str = "channels") -> tf.Tensor:
    """uint8 ``[N, H, W, 3]`` -> uint8: each image standardised to one mean and spread
    (NORMAL_MEAN, NORMAL_STD), so that a pinker stain or a brighter lamp look alike while
    the contrasts inside the cell stay. ``channels``: R, G and B each; ``grey``: the luma
    (ITU-R BT.601 weights), repeated in the three channels."""
    x = tf.cast(images, tf.float32)
    if mode == "grey":
        x = tf.tile(tf.reduce_sum(x * [0.299, 0.587, 0.114], axis=-1, keepdims=True), [1, 1, 1, 3])
    mean = tf.reduce_mean(x, axis=[1, 2], keepdims=True)
    std = tf.sqrt(tf.reduce_mean(tf.square(x - mean), axis=[1, 2], keepdims=True))
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
