"""The capture-like window around a found white cell, in TensorFlow ops: the one definition
that the ``count`` command (:func:`keras_blood.serving.count.capture_window`) and the
``serving_fields`` signature (:func:`keras_blood.serving.export.serving_archive`) both cut by.

A version was trained on captures of one cell. The window around a found cell is such a
capture: centred on its box, of the version's input aspect (``frame``), its shorter side the
box's longer side over ``cell_fraction`` (:data:`~keras_blood.serving.count_request.CELL_FRACTION`).
Past the field's edge it takes ``fill`` (the field's median colour, :func:`median_colour`): the
window stays centred, as the single-cell captures have their cell, rather than shifted inside
the field; and a flat colour, not the field mirrored, which could add a second cell that a
cell crop in the graph might centre on instead.

Sides are rounded half to even, as Python's ``round`` does.
"""

from __future__ import annotations

import functools

import tensorflow as tf

from keras_blood.serving.count_request import CELL_FRACTION

# The longest side a window is cut at: a box as large as a huge field would otherwise make a
# window of gigabytes. A larger window is cut at a coarser scale (area-averaged) first.
MAX_WINDOW_SIDE = 2048


def window_geometry(box: tf.Tensor, frame: tuple[int, int], cell_fraction: float = CELL_FRACTION):
    """int32 scalars ``(top, left, height, width)``: the window around ``box`` (int
    ``[xmin, ymin, xmax, ymax]``, corners inclusive) in field pixels, before any coarser scale."""
    xmin, ymin, xmax, ymax = tf.unstack(tf.cast(box, tf.int64))
    longer = tf.cast(tf.maximum(xmax - xmin + 1, ymax - ymin + 1), tf.float64)
    # Python's float64 steps, one by one: side = longer / cell_fraction, then side x the
    # frame's longer side / its shorter side. The *_no_nan ops are the same IEEE operations
    # on these finite values, and the graph optimizer does not fold their constants together
    # (x * a / b into x * (a / b)), which would move a side that falls on .5 by a pixel.
    side = tf.math.divide_no_nan(longer, tf.constant(cell_fraction, tf.float64))
    shorter_frame, longer_frame = (tf.constant(float(n), tf.float64) for n in sorted(frame))
    stretched = tf.math.divide_no_nan(tf.math.multiply_no_nan(side, longer_frame), shorter_frame)
    short, long = (tf.cast(tf.maximum(tf.round(length), 1.0), tf.int64) for length in (side, stretched))
    height, width = (short, long) if frame[0] <= frame[1] else (long, short)
    # The top-left corner, so that the box's centre is the window's (rounded half up).
    top = tf.math.floordiv(ymin + ymax - height + 2, 2)
    left = tf.math.floordiv(xmin + xmax - width + 2, 2)
    return tuple(tf.cast(value, tf.int32) for value in (top, left, height, width))


def median_colour(image: tf.Tensor) -> tf.Tensor:
    """uint8 ``[3]``: each channel's median over uint8 ``image`` ``[H, W, 3]`` (the mean of
    the two middle values for an even count, rounded half to even), from its histogram."""
    values = tf.cast(tf.reshape(image, [-1, 3]), tf.int32) + tf.constant([0, 256, 512])
    counts = tf.reshape(tf.math.bincount(values, minlength=768, maxlength=768, dtype=tf.int64), [3, 256])
    below = tf.cumsum(counts, axis=1)  # pixels at or below each level, per channel
    total = below[:, -1:]
    lower = tf.argmax(below >= (total + 1) // 2, axis=1)
    upper = tf.argmax(below >= total // 2 + 1, axis=1)
    return tf.cast(tf.round(tf.cast(lower + upper, tf.float64) / 2), tf.uint8)


def cut_window(
    image: tf.Tensor,
    box: tf.Tensor,
    frame: tuple[int, int],
    cell_fraction: float = CELL_FRACTION,
    fill: tf.Tensor | None = None,
) -> tf.Tensor:
    """uint8 ``[h, w, 3]``: the window of :func:`window_geometry` around ``box`` in uint8
    ``image`` ``[H, W, 3]``, ``fill`` (uint8 ``[3]``; default: :func:`median_colour`) past its
    edge; a window longer than :data:`MAX_WINDOW_SIDE` is cut at the scale that brings it there."""
    image = tf.convert_to_tensor(image, tf.uint8)
    fill = median_colour(image) if fill is None else tf.convert_to_tensor(fill, tf.uint8)
    top, left, height, width = window_geometry(box, frame, cell_fraction)
    field_height, field_width = tf.shape(image)[0], tf.shape(image)[1]
    scale = tf.minimum(MAX_WINDOW_SIDE / tf.cast(tf.maximum(height, width), tf.float64), 1.0)

    def scaled(length):
        return tf.maximum(tf.cast(tf.round(tf.cast(length, tf.float64) * scale), tf.int32), 1)

    out_height, out_width = scaled(height), scaled(width)
    row_start, row_stop = tf.maximum(top, 0), tf.minimum(top + height, field_height)
    col_start, col_stop = tf.maximum(left, 0), tf.minimum(left + width, field_width)
    inside = image[row_start : tf.maximum(row_stop, row_start), col_start : tf.maximum(col_stop, col_start)]
    empty = tf.equal(tf.size(inside), 0)
    inside = tf.cond(
        (scale < 1.0) & ~empty,
        lambda: tf.cast(
            tf.round(tf.image.resize(inside, [scaled(tf.shape(inside)[0]), scaled(tf.shape(inside)[1])], "area")),
            tf.uint8,
        ),
        lambda: inside,
    )
    # Where the field's pixels go in the window (none for a window wholly outside the field).
    y0 = tf.where(empty, 0, tf.cast(tf.round(tf.cast(row_start - top, tf.float64) * scale), tf.int32))
    x0 = tf.where(empty, 0, tf.cast(tf.round(tf.cast(col_start - left, tf.float64) * scale), tf.int32))
    inside = inside[: out_height - y0, : out_width - x0]
    shape = tf.shape(inside)
    padding = [[y0, out_height - y0 - shape[0]], [x0, out_width - x0 - shape[1]], [0, 0]]
    placed = tf.pad(tf.ones_like(inside, tf.bool), padding)
    return tf.where(placed, tf.pad(inside, padding), fill)


@functools.cache
def window_cutter(frame: tuple[int, int], cell_fraction: float = CELL_FRACTION):
    """:func:`cut_window` as one compiled function for fields of every size (traced once):
    ``(image [H, W, 3] uint8, box [4] int32, fill [3] uint8) -> window``."""
    return tf.function(
        lambda image, box, fill: cut_window(image, box, frame, cell_fraction, fill),
        input_signature=[
            tf.TensorSpec([None, None, 3], tf.uint8),
            tf.TensorSpec([4], tf.int32),
            tf.TensorSpec([3], tf.uint8),
        ],
        autograph=False,
    )


@functools.cache
def _compiled_median():
    return tf.function(median_colour, input_signature=[tf.TensorSpec([None, None, 3], tf.uint8)], autograph=False)


def field_fill(image: tf.Tensor) -> tf.Tensor:
    """:func:`median_colour`, compiled once, for a field of any size."""
    return _compiled_median()(tf.convert_to_tensor(image, tf.uint8))
