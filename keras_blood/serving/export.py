"""The serving graph: a trained model written as a SavedModel (Keras's export) in TensorFlow
Serving's layout (``<output.publish_dir>/<output.name>/<version>/``) and published by
:func:`publish_model`, safely (:mod:`keras_blood.serving.publish`).

The ``serving_default`` signature takes raw uint8 pixels at the model's input size; the
``serving_bytes`` signature takes encoded image files of any size, decodes them by the one
rule (:func:`keras_blood.preparation.decode.decode`: a BMP longer than its header says cut
to that length, an 8-bit BMP's palette looked up; an image whose header says more than
``data.max_pixels`` pixels refused before decoding) and applies the version's recorded
preparation in-graph first. A version whose config has a cell crop also has
``serving_fields``: a whole smear field in, its white cells' boxes and classes out
(:mod:`keras_blood.serving.fields_signature`).
Everything else happens in-graph too: the cell crop and colour extraction when the config
turns them on. Beside them, ``model.keras`` keeps the same model (TTA and ensemble
wrappers included) in Keras's native format
(:func:`keras_blood.serving.version.load_keras_model`); the cell crop and colour
extraction are not in it. ``assets.extra/`` records the config, metrics, class names,
preparation, signature and the run the version came from.
"""

from __future__ import annotations

import contextlib
import errno
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf

from keras_blood.config.loading import save_config
from keras_blood.config.paths import EXTRA, RUN_CONFIG
from keras_blood.config.schema import Config
from keras_blood.errors import ExportError
from keras_blood.files import make_folders, make_readable, out_of_space, owned_prefix, remove_stale_staging, staging
from keras_blood.preparation.decode import Preparation, decode, prepare
from keras_blood.preparation.steps import make_preprocess
from keras_blood.serving.fields_signature import (
    FIELD_SPEC,
    FIELDS_RECORD,
    FIELDS_SIGNATURE,
    fields_record,
    make_serve_fields,
    serves_fields,
)
from keras_blood.serving.publish import (
    STAGING_PREFIX,
    NotPublished,
    check_publish_target,
    not_better_reason,
    publish_version,
    served_folder,
    skip_reason,
)
from keras_blood.serving.version import BYTES_SIGNATURE, KERAS_MODEL, OUTPUT_KEY, RUN_RECORD, SIGNATURE, Signature


def publish_model(
    model: keras.Model,
    config: Config,
    class_names: list[str],
    metrics: dict[str, Any],
    preparation: dict[str, Any] | None = None,
    run: Path | None = None,
    records: dict[str, Any] | None = None,
) -> Path:
    """Publish a new version of ``output.name`` and return its folder.

    ``records``: more files for ``assets.extra/``, a file name and its JSON each.

    ``run``: the run folder that trained the model, recorded in ``assets.extra/run.json``
    (:func:`keras_blood.serving.publish.find_run_version` finds the version again, so a resumed run publishes once).

    Raises :class:`NotPublished` (its message the reason, one line) when ``output.publish``
    or ``output.publish_if_better`` declines, and :class:`ExportError` when the name's
    published versions have another signature or the folder is not writable.
    """
    reason = skip_reason(config)
    if reason:
        raise NotPublished(reason)
    # A server sends whole images at the data's size; a cell crop (if any) happens in-graph.
    height, width = config.data.height_width
    channels = model.input_shape[-1]
    signature = Signature((height, width, channels), "uint8", tuple(class_names))
    recipe = {"input_size": [height, width], **(preparation or {})}
    prep = Preparation.from_json(recipe)
    if prep.size != (height, width):
        raise ExportError(f"preparation resizes to {list(prep.size)} but the model takes {height}x{width}")
    check_publish_target(config, class_names, signature.input_shape)
    reason = not_better_reason(config, metrics)
    if reason:
        raise NotPublished(reason)
    base = served_folder(config)
    recipe.update(in_graph_steps(config))
    with _write_errors(base):
        make_folders(base)  # 0755 under any umask: a server running as another user reads versions
        remove_stale_staging(base, STAGING_PREFIX)  # what a killed publish left
        with staging(base, prefix=owned_prefix(STAGING_PREFIX), folder=True) as stage:
            serving_archive(model, config, prep, class_names).write_out(str(stage.path), verbose=False)
            model.save(stage.path / KERAS_MODEL)
            if serves_fields(config):
                records = {FIELDS_RECORD: fields_record(), **(records or {})}
            write_records(stage.path / EXTRA, config, metrics, class_names, recipe, signature, run, records)
            make_readable(stage.path)
            return publish_version(stage, config, signature)


@contextlib.contextmanager
def _write_errors(base: Path) -> Iterator[None]:
    """A full disk or an unwritable folder while writing a version: one ExportError that
    names the folder and the fix (the staging folder is gone by then: nothing is published)."""
    try:
        yield
    except (OSError, tf.errors.OpError) as exc:
        if out_of_space(exc):
            why, fix = "no space left on device", "free space there or"
        elif (
            isinstance(exc, PermissionError | tf.errors.PermissionDeniedError)
            or getattr(exc, "errno", None) == errno.EROFS
        ):
            why, fix = "not writable", "make it writable or"
        else:
            raise
        raise ExportError(
            f"cannot write a version under {base} ({why}); nothing was published: {fix} "
            "--set output.publish_dir=<another folder>"
        ) from None


def in_graph_steps(config: Config) -> dict[str, Any]:
    """The preparation the serving graph does itself, recorded so that a reader of the
    version knows it."""
    steps: dict[str, Any] = {}
    if config.data.cell_crop is not None:
        steps["cell_crop"] = config.data.cell_crop.model_dump(mode="json")
    if config.data.color_extraction:
        steps["color_extraction"] = config.data.color.model_dump(mode="json")
    return steps


def serving_archive(
    model: keras.Model, config: Config, prep: Preparation, class_names: Sequence[str]
) -> keras.export.ExportArchive:
    """``model`` behind its signatures: uint8 pixels at the data's size, image files, and
    where the config has a cell crop, a smear field (:mod:`keras_blood.serving.fields_signature`)."""
    height, width = config.data.height_width
    channels = model.input_shape[-1]
    archive = keras.export.ExportArchive()
    archive.track(model)
    preprocess = make_preprocess(config.data)

    def serve(pixels):
        if preprocess is not None:  # the same uint8 -> uint8 steps as in training
            pixels = preprocess(pixels)
        probabilities = model(tf.cast(pixels, tf.float32), training=False)
        return {OUTPUT_KEY: probabilities}

    def serve_bytes(images):
        # Each file's header is checked before it is decoded (data.max_pixels): a few bytes
        # of PNG can say 20000x20000, which would take gigabytes to decode.
        pixels = tf.map_fn(
            lambda data: prepare(decode(data, config.data.max_pixels), prep),
            images,
            fn_output_signature=tf.TensorSpec([height, width, channels], tf.uint8),
        )
        return serve(pixels)

    archive.add_endpoint(
        SIGNATURE,
        serve,
        input_signature=[tf.TensorSpec([None, height, width, channels], tf.uint8, name="pixels")],
    )
    archive.add_endpoint(
        BYTES_SIGNATURE,
        serve_bytes,
        input_signature=[tf.TensorSpec([None], tf.string, name="images")],
    )
    if serves_fields(config):
        archive.add_endpoint(
            FIELDS_SIGNATURE,
            make_serve_fields(serve, prep, class_names, config.data.max_pixels),
            input_signature=[FIELD_SPEC],
        )
    return archive


def write_records(
    extra: Path,
    config: Config,
    metrics: dict[str, Any],
    class_names: list[str],
    recipe: dict[str, Any],
    signature: Signature,
    run: Path | None,
    records: dict[str, Any] | None = None,
) -> None:
    """``assets.extra/``: what a server, an evaluation or a later run reads about the version."""
    extra.mkdir()
    save_config(config, extra / RUN_CONFIG)
    (extra / "metrics.json").write_text(json.dumps(metrics, indent=2))
    (extra / "class_names.json").write_text(json.dumps(class_names, indent=2))
    (extra / "preparation.json").write_text(json.dumps(recipe, indent=2))
    (extra / "signature.json").write_text(json.dumps(signature.to_json(), indent=2))
    if run is not None:
        (extra / RUN_RECORD).write_text(json.dumps({"run_dir": str(Path(run).resolve())}, indent=2))
    for name, record in (records or {}).items():
        (extra / name).write_text(json.dumps(record, indent=2))
