"""The ``serving_fields`` signature: one encoded smear field in, its white cells out, found
and classified in one graph, as the ``count`` command finds and classifies them.

Input ``field``: one encoded file (a ``tf.string`` scalar, or a batch of one), decoded by
the one rule (:func:`keras_blood.preparation.decode.decode`, the header checked against
``data.max_pixels`` first, as ``serving_bytes`` does). Outputs, ``K = max_cells`` slots
(:class:`~keras_blood.preparation.finder.FinderConfig`), the found cells first, the surest
first:

- ``boxes`` int32 ``[K, 4]``: xmin, ymin, xmax, ymax in field pixels, corners inclusive
  (``cells.csv``'s columns);
- ``valid`` bool ``[K]``: the slot holds a cell; ``edge`` bool ``[K]``: the field's edge cuts it;
- ``classes`` string ``[K]``: the most probable class's name ("" in an empty slot), as
  TensorFlow's classification signatures name classes;
- ``probabilities`` float32 ``[K, classes]``: in ``assets.extra/class_names.json``'s order
  (zeros in an empty slot).

Every output has ``K`` rows, so TensorFlow Serving's row format answers a cell a row.
Inside: :func:`~keras_blood.preparation.finder.find_cells_tf`, then each cell's window
(:func:`keras_blood.serving.capture_window.cut_window`, which ``count`` cuts by too), the
version's recipe (:func:`~keras_blood.preparation.decode.prepare`) and the graph of
``serving_default``. The finder's parameters and the window's cell fraction are recorded in
``assets.extra/fields.json``.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import tensorflow as tf

from keras_blood.config.schema import Config
from keras_blood.preparation.decode import Preparation, decode, prepare
from keras_blood.preparation.finder import FinderConfig, find_cells_tf
from keras_blood.serving.capture_window import cut_window, median_colour
from keras_blood.serving.count_request import CELL_FRACTION
from keras_blood.serving.version import OUTPUT_KEY

FIELDS_SIGNATURE = "serving_fields"
FIELD_INPUT = "field"
FIELDS_RECORD = "fields.json"  # in assets.extra: what serving_fields finds cells and cuts windows with

# Unknown rank: a scalar (TensorFlow Serving's columnar "inputs") or a batch of one (its "instances").
FIELD_SPEC = tf.TensorSpec(None, tf.string, name=FIELD_INPUT)


def serves_fields(config: Config) -> bool:
    """Whether a version of ``config`` gets the signature: where its data has a cell crop
    (``data.cell_crop``), the white-cell models, whose graph finds the cell in the frame it is
    sent, as in a window cut around a found cell. It adds seconds to a publish and some
    hundred kB to saved_model.pb (docs/serving.md)."""
    return config.data.cell_crop is not None


def fields_record(finder: FinderConfig | None = None, cell_fraction: float = CELL_FRACTION) -> dict[str, Any]:
    """``assets.extra/fields.json``: the signature's finder parameters and cell fraction
    (:func:`make_serve_fields`'s defaults where not given)."""
    finder = finder or FinderConfig()
    parameters = {item.name: getattr(finder, item.name) for item in dataclasses.fields(finder) if item.name != "color"}
    return {
        "signature": FIELDS_SIGNATURE,
        "cell_fraction": cell_fraction,
        "finder": {**parameters, "color": finder.color.model_dump(mode="json")},
    }


@functools.cache
def field_finder(finder: FinderConfig, max_pixels: int | None):
    """Encoded field -> its pixels, :func:`find_cells_tf`'s boxes, valid and edge, and its
    median colour: one compiled function for each finder and limit, traced once a process
    (tracing the finder takes seconds; every version published after the first calls it)."""

    def find(data):
        pixels = decode(data, max_pixels)
        found = find_cells_tf(pixels[None], finder)
        return pixels, found.boxes[0], found.valid[0], found.edge[0], median_colour(pixels)

    return tf.function(find, input_signature=[tf.TensorSpec([], tf.string)], autograph=False)


def make_serve_fields(
    serve: Callable[[tf.Tensor], dict[str, tf.Tensor]],
    prep: Preparation,
    class_names: Sequence[str],
    max_pixels: int | None,
    finder: FinderConfig | None = None,
    cell_fraction: float = CELL_FRACTION,
) -> Callable[[tf.Tensor], dict[str, tf.Tensor]]:
    """The signature's function, around ``serve`` (``serving_default``'s: uint8 pixels at
    ``prep.size`` -> ``{"probabilities": ...}``)."""
    finder = finder or FinderConfig()
    names = tf.constant(list(class_names))
    height, width = prep.size
    classes = len(class_names)

    def serve_fields(field):
        one = tf.debugging.assert_equal(tf.size(field), 1, message=f"{FIELDS_SIGNATURE} takes one encoded field a call")
        with tf.control_dependencies([one]):
            data = tf.reshape(field, [])
        pixels, boxes, valid, edge, fill = field_finder(finder, max_pixels)(data)
        cells = tf.boolean_mask(boxes, valid)

        def classify():
            windows = tf.map_fn(
                lambda box: prepare(cut_window(pixels, box, prep.size, cell_fraction, fill), prep),
                cells,
                fn_output_signature=tf.TensorSpec([height, width, 3], tf.uint8),
            )
            return tf.cast(serve(windows)[OUTPUT_KEY], tf.float32)

        # No model call on an empty field: its graph (a cell crop, test-time views) need not take no images.
        found_probabilities = tf.cond(tf.shape(cells)[0] > 0, classify, lambda: tf.zeros([0, classes], tf.float32))
        probabilities = tf.scatter_nd(tf.where(valid), found_probabilities, [finder.max_cells, classes])
        labels = tf.where(valid, tf.gather(names, tf.argmax(probabilities, axis=1)), "")
        return {"boxes": boxes, "valid": valid, "edge": edge, "classes": labels, OUTPUT_KEY: probabilities}

    return serve_fields
