"""Export a trained model as a SavedModel in TensorFlow Serving's layout.

``<export_dir>/<config name>/<version>/`` with integer versions that only increase. Each
version is written to a hidden temporary folder beside the others and renamed into place,
so a crash leaves no partial version and an earlier version is never overwritten. The
``serving_default`` signature takes raw uint8 pixels; everything else happens in-graph,
colour extraction included when the config turns it on.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf

from keras_blood.color import make_preprocess
from keras_blood.config import Config, save_config
from keras_blood.errors import ExportError

SIGNATURE = "serving_default"
OUTPUT_KEY = "probabilities"


def existing_versions(base: Path) -> list[int]:
    if not base.is_dir():
        return []
    return sorted(int(p.name) for p in base.iterdir() if p.is_dir() and p.name.isdigit())


def export_model(
    model: keras.Model,
    config: Config,
    class_names: list[str],
    metrics: dict[str, Any],
    preparation: dict[str, Any] | None = None,
) -> Path:
    """Write a new version of ``config.name`` and return its folder."""
    height, width, channels = model.input_shape[1:]
    base = config.output.export_dir / config.name
    base.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=base))
    try:
        archive = keras.export.ExportArchive()
        archive.track(model)

        preprocess = make_preprocess(config.data)
        if preprocess is not None:
            preparation = {**(preparation or {}), "color_extraction": config.data.color.model_dump(mode="json")}

        def serve(pixels):
            if preprocess is not None:  # the same uint8 -> uint8 step as in training
                pixels = preprocess(pixels)
            probabilities = model(tf.cast(pixels, tf.float32), training=False)
            return {OUTPUT_KEY: probabilities}

        archive.add_endpoint(
            SIGNATURE,
            serve,
            input_signature=[tf.TensorSpec([None, height, width, channels], tf.uint8, name="pixels")],
        )
        archive.write_out(str(staging), verbose=False)

        extra = staging / "assets.extra"
        extra.mkdir()
        save_config(config, extra / "config.yaml")
        (extra / "metrics.json").write_text(json.dumps(metrics, indent=2))
        (extra / "class_names.json").write_text(json.dumps(class_names, indent=2))
        (extra / "preparation.json").write_text(
            json.dumps({"input_size": [height, width], **(preparation or {})}, indent=2)
        )
        return _publish(staging, base)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _publish(staging: Path, base: Path) -> Path:
    """Rename ``staging`` to the next free version number (atomic on one filesystem)."""
    for _ in range(100):
        version = base / str(max(existing_versions(base), default=0) + 1)
        if version.exists():  # rename() would replace an empty folder; never reuse a number
            continue
        try:
            os.rename(staging, version)
            return version
        except OSError:  # another process published this number first; take the next
            continue
    raise ExportError(f"could not publish a new version under {base}")


def load_exported(path: str | Path):
    """Load an exported version: ``(serving function, class names)``."""
    path = Path(path)
    if not (path / "saved_model.pb").is_file():
        raise ExportError(f"{path} is not an exported model version (no saved_model.pb)")
    loaded = tf.saved_model.load(str(path))
    class_names = json.loads((path / "assets.extra" / "class_names.json").read_text())
    return loaded.signatures[SIGNATURE], class_names
