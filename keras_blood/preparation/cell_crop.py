"""The cell crop: a window around the densest stained blob, the white cell, cut from the
whole image in TensorFlow ops (for tf.data and the serving graph alike).

``cell_crop.fit: window`` cuts a fixed fraction of the image; ``extent`` sizes the window
by the cell's own stained extent, sampled as two matrix products per image so that LiteRT
and ONNX convert it (neither has CropAndResize).
"""

from __future__ import annotations

import functools

import numpy as np
import tensorflow as tf

from keras_blood.config.schema import CellCropConfig, ColorConfig
from keras_blood.preparation.color import color_mask, gaussian_kernel

PADDING_BLACK = 25  # below this in R, G and B: padding, not the field (extent_fill: field)


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
    # (not crop_and_resize, nor a uint8 pad), no slower than crop_and_resize, and one gather
    # of whole pixels beats a batched gather per axis (docs/benchmarks.md). (crop_and_resize, in
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
    # neither format. The same pixels but for float rounding, and faster on CPU (both
    # measured: docs/benchmarks.md).
    weights = tf.constant(_resize_weights(side, crop.size))  # [size, side]
    planes = tf.transpose(tf.cast(windows, tf.float32), [0, 3, 1, 2])
    resized = tf.matmul(tf.matmul(weights, planes), weights, transpose_b=True)
    resized = tf.transpose(resized, [0, 2, 3, 1])
    return tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8)


@functools.cache
def _resize_weights(side: int, size: int) -> np.ndarray:
    """``[size, side]``: row i holds the weights that an antialiased bilinear
    ``tf.image.resize`` from ``side`` to ``size`` pixels gives each input pixel for output
    pixel i (the resize of each one-hot column, computed eagerly by TensorFlow itself)."""
    with tf.init_scope():
        basis = tf.reshape(tf.eye(side), [1, side, 1, side])  # pixel j is 1 in channel j
        resized = tf.image.resize(basis, (size, 1), method="bilinear", antialias=True)
        return resized.numpy().reshape(size, side)


# An extent window stays within these fractions of the shorter side, whatever the mask says
# (an image with almost no stain, or one stained all over).
EXTENT_LIMITS = (0.25, 1.0)


def _near_mask(images, centres, mask, reach: float):
    """float32 ``[N, H, W]``: the colour ``mask``, bool ``[N, H, W]``, within the square of side ``reach`` x
    the shorter side around each centre, and the row and column offsets from the centre."""
    height, width = images.shape[1], images.shape[2]
    half = reach * min(height, width) / 2
    rows = tf.cast(tf.range(height)[None, :, None] - centres[:, 0, None, None], tf.float32)
    cols = tf.cast(tf.range(width)[None, None, :] - centres[:, 1, None, None], tf.float32)
    near = tf.logical_and(tf.abs(rows) <= half, tf.abs(cols) <= half)
    return tf.cast(tf.logical_and(mask, near), tf.float32), rows, cols


def extent_sides(
    images: tf.Tensor,
    centres: tf.Tensor,
    color: ColorConfig,
    scale: float,
    aspect: bool = False,
    mask=None,
    largest: float = EXTENT_LIMITS[1],
    reach: float = 0.8,
):
    """float32 ``[N, 2]``: each window's height and width, ``scale`` x sqrt(stained pixels
    in the square of side ``reach`` x the shorter side around each centre), clipped
    to ``EXTENT_LIMITS`` (the upper one ``largest``). With ``aspect``, the window takes the stain's own aspect ratio
    (the ratio of its spreads along rows and columns, within 2:3 and 3:2) at the same area,
    so an image squeezed or stretched on its way in is cut back to round cells. ``mask``:
    :func:`color_mask` of ``images`` where the caller has it already."""
    height, width = images.shape[1], images.shape[2]
    mask, rows, cols = _near_mask(images, centres, color_mask(images, color) if mask is None else mask, reach)
    area = tf.reduce_sum(mask, axis=[1, 2])
    low, high = (limit * min(height, width) for limit in (EXTENT_LIMITS[0], largest))
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
    sides = extent_sides(
        images, centres, color, crop.extent_scale, crop.extent_aspect, mask, crop.extent_max, crop.extent_reach
    )
    half = (sides - 1) / 2
    # Bilinear samples at size x size points spanning each window, as crop_and_resize takes
    # them, written as two matrix products per image ([size, H] x [H, W] x [W, size]): ops
    # that LiteRT and ONNX have (CropAndResize converts to neither). A sample past an edge
    # takes the background colour, as crop_and_resize's extrapolation_value.
    steps = tf.range(crop.size, dtype=tf.float32) / max(crop.size - 1, 1)  # [size]
    start = tf.cast(centres, tf.float32) - half  # [N, 2]
    rows = _sample_weights(start[:, 0, None] + 2 * half[:, 0, None] * steps, height)  # [N, size, H]
    cols = _sample_weights(start[:, 1, None] + 2 * half[:, 1, None] * steps, width)  # [N, size, W]
    pixels, fill = _pixels_and_fill(images, color, crop)
    planes = tf.transpose(pixels, [0, 3, 1, 2])  # [N, 3, H, W]
    windows = tf.matmul(tf.matmul(rows[:, None], planes), cols[:, None], transpose_b=True)  # [N, 3, size, size]
    inside = tf.reduce_sum(rows, axis=2)[:, :, None] * tf.reduce_sum(cols, axis=2)[:, None, :]  # 1 or 0
    windows = tf.transpose(windows, [0, 2, 3, 1]) + fill[:, None, None, :] * (1.0 - inside)[..., None]
    return tf.cast(tf.clip_by_value(tf.round(windows), 0, 255), tf.uint8)


def _pixels_and_fill(images: tf.Tensor, color: ColorConfig, crop: CellCropConfig) -> tuple[tf.Tensor, tf.Tensor]:
    """float32 ``images`` as the window samples them, and ``[N, 3]``: the colour a window
    takes past its image's edge. ``field``: black padding (a rotation's corners, a letterbox)
    is painted with the field's colour, the mean of the border's other pixels."""
    pixels = tf.cast(images, tf.float32)
    if crop.extent_fill == "background":
        return pixels, tf.fill([tf.shape(images)[0], 3], float(color.background))
    edges = tf.concat([pixels[:, 0], pixels[:, -1], pixels[:, :, 0], pixels[:, :, -1]], axis=1)  # [N, P, 3]
    if crop.extent_fill == "border":
        return pixels, tf.reduce_mean(edges, axis=1)
    field_edges = tf.cast(tf.reduce_max(edges, axis=-1, keepdims=True) >= PADDING_BLACK, tf.float32)
    field = tf.cast(tf.reduce_max(pixels, axis=-1, keepdims=True) >= PADDING_BLACK, tf.float32)
    # A border all black: the mean of the image's whole field stands in.
    whole = tf.reduce_sum(pixels * field, axis=[1, 2]) / tf.maximum(tf.reduce_sum(field, axis=[1, 2]), 1.0)
    counted = tf.reduce_sum(field_edges, axis=1)
    fill = tf.where(counted > 0, tf.reduce_sum(edges * field_edges, axis=1) / tf.maximum(counted, 1.0), whole)
    return tf.where(field > 0, pixels, fill[:, None, None, :]), fill


def _sample_weights(positions: tf.Tensor, length: int) -> tf.Tensor:
    """float32 ``[N, size, length]``: row i weighs the pixels that linear interpolation at
    ``positions[:, i]`` reads (the two around it, by distance), all zero past either end."""
    low = tf.floor(positions)
    frac = (positions - low)[..., None]
    low = tf.cast(low, tf.int32)[..., None]
    high = tf.minimum(low + 1, length - 1)  # at the last pixel both reads are that pixel
    pixels = tf.range(length)[None, None, :]
    weights = (
        tf.cast(tf.equal(pixels, low), tf.float32) * (1.0 - frac) + tf.cast(tf.equal(pixels, high), tf.float32) * frac
    )
    inside = tf.logical_and(positions >= 0.0, positions <= float(length - 1))[..., None]
    return tf.where(inside, weights, 0.0)


def cut_cell(images: tf.Tensor, color: ColorConfig, crop: CellCropConfig) -> tf.Tensor:
    """The cell crop ``crop.fit`` asks for."""
    return (crop_to_cell_extent if crop.fit == "extent" else crop_to_cell)(images, color, crop)
