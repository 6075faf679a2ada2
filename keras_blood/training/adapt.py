"""A published version fitted to a lab's own unlabelled captures (``python -m keras_blood.adapt``).

A batch-normalisation layer keeps the mean and variance of its inputs over the training
images and, when it serves, shifts and scales every input by them. In another lab (another
stain, lamp, camera or magnification) those inputs move, and the layer then hands the
layers after it values they never saw. AdaBN (Li et al., 2016) re-estimates the statistics
on the new lab's images, no labels needed: here every batch-normalisation layer of the
version's Keras model, over all the lab's images, prepared exactly as the version's serving
graph prepares a capture (decode, frame, cell crop, stain normalisation).

The estimate runs the network forward in training mode, so that each layer normalises by
the lab's statistics and the layers after it see what they will see once adapted; dropout
is switched off while it runs, and each layer's momentum makes its moving statistics the
plain mean over the batches. Nothing else changes: the weights, the classes and the
preparation are the version's, and the new version records where it came from
(``assets.extra/adaptation.json``).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from keras_blood.config.loading import load_config
from keras_blood.config.paths import version_config_file
from keras_blood.errors import DataError
from keras_blood.preparation.decode import Preparation
from keras_blood.preparation.steps import make_preprocess
from keras_blood.serving.export import publish_model
from keras_blood.serving.predict import Progress, prepared_files
from keras_blood.serving.version import load_keras_model, read_records

ADAPTATION_RECORD = "adaptation.json"  # in assets.extra: the version and the images it was fitted from


def batch_norm_layers(model: keras.Model) -> list[keras.layers.BatchNormalization]:
    """Every BatchNormalization layer of ``model``, nested models' included, in order."""
    found = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            found.append(layer)
        elif isinstance(layer, keras.Model):
            found.extend(batch_norm_layers(layer))
    return found


def _dropout_layers(model: keras.Model) -> list[keras.layers.Layer]:
    found = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            found.extend(_dropout_layers(layer))
        elif isinstance(layer, keras.layers.Dropout | keras.layers.SpatialDropout2D | keras.layers.GaussianDropout):
            found.append(layer)
    return found


@contextlib.contextmanager
def dropout_off(model: keras.Model) -> Iterator[None]:
    """Dropout layers pass their inputs through while the statistics are estimated."""
    layers = _dropout_layers(model)
    rates = [layer.rate for layer in layers]
    try:
        for layer in layers:
            layer.rate = 0.0
        yield
    finally:
        for layer, rate in zip(layers, rates):
            layer.rate = rate


def adapt_batch_norm(model: keras.Model, batches: Sequence[np.ndarray]) -> int:
    """Re-estimate the moving mean and variance of every batch-normalisation layer of
    ``model`` on ``batches`` (the model's float inputs); the number of layers adapted.

    Batch ``k`` (from 1) is weighted by momentum ``(k - 1) / k``: each moving statistic ends
    as the mean of the batches' statistics."""
    layers = batch_norm_layers(model)
    momenta = [layer.momentum for layer in layers]
    try:
        with dropout_off(model):
            for k, batch in enumerate(batches, start=1):
                for layer in layers:
                    layer.momentum = (k - 1) / k
                model(batch, training=True)
    finally:
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum
    return len(layers)


def model_inputs(entries: list[tuple[str, str]], config, preparation: Preparation, batch_size: int):
    """The version's model inputs for the readable files of ``entries``, in batches, and
    the files that could not be read (``(path, why)``)."""
    preprocess = make_preprocess(config.data)
    batches, pending, failed = [], [], []
    progress = Progress(len(entries))

    def flush():
        pixels = tf.constant(np.stack(pending))
        if preprocess is not None:  # the serving graph's steps: cell crop, stain, colour
            pixels = preprocess(pixels)
        batches.append(tf.cast(pixels, tf.float32))
        pending.clear()

    for done, ((path, _), (pixels, error)) in enumerate(
        zip(entries, prepared_files(entries, preparation, batch_size)), 1
    ):
        if error:
            failed.append((path, error))
        else:
            pending.append(pixels)
            if len(pending) == batch_size:
                flush()
        progress.update(done, len(failed))
    if pending:
        flush()
    progress.clear()
    return batches, failed


def adapt_version(
    version: str | Path,
    entries: list[tuple[str, str]],
    data: Sequence[str],
    overrides: Sequence[str] = (),
    batch_size: int = 64,
    min_images: int = 20,
) -> Path:
    """Publish ``version`` fitted to the images of ``entries`` (``(path, error)`` pairs, as
    :func:`keras_blood.serving.request.check_request` gives them; ``data``: the folders, files
    or globs they were found in, for the record) and return the new version's folder.

    The new version goes under ``output.name`` (the version's own name unless ``overrides``
    set it), numbered after the newest there."""
    version = Path(version)
    start = time.perf_counter()
    class_names, recipe = read_records(version)
    config = load_config(version_config_file(version), list(overrides))
    # The adapted version has no test figures of its own: it is published as it is.
    config = config.model_copy(
        update={"output": config.output.model_copy(update={"publish": "always", "publish_if_better": False})}
    )
    model = load_keras_model(version)
    if not batch_norm_layers(model):
        raise DataError(
            f"{version} has no batch-normalisation layers (its model normalises each image by itself, "
            "or not at all): there are no statistics to fit to a lab; use the version as it is"
        )
    batches, failed = model_inputs(entries, config, Preparation.from_json(recipe), batch_size)
    used = sum(len(batch) for batch in batches)
    for path, why in failed[:3]:
        print(f"warning: {path}: left out ({why})", flush=True)
    if used < min_images:
        raise DataError(
            f"{' '.join(data)}: {used} readable image(s) ({len(failed)} unreadable); "
            f"at least {min_images} are needed to "
            "estimate a lab's statistics: add captures of the lab"
        )
    adapted = adapt_batch_norm(model, batches)
    print(
        f"Adapted {adapted} batch-normalisation layers to {used} images of {' '.join(data)} "
        f"({len(failed)} left out) in {time.perf_counter() - start:.1f} s",
        flush=True,
    )
    record: dict[str, Any] = {
        "adapted_from": str(version.resolve()),
        "data": [str(Path(path).resolve()) for path in data],
        "images": used,
        "left_out": len(failed),
        "method": "AdaBN: batch-normalisation statistics re-estimated on the lab's images",
        "layers": adapted,
    }
    metrics = {"adaptation": record}
    return publish_model(model, config, class_names, metrics, preparation=recipe, records={ADAPTATION_RECORD: record})
