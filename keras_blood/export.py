"""Export a trained model as a SavedModel in TensorFlow Serving's layout.

``<export_dir>/<config name>/<version>/`` with integer versions that only increase. Each
version is written to a hidden temporary folder beside the others and renamed into place,
so a crash leaves no partial version and an earlier version is never overwritten. The
``serving_default`` signature takes raw uint8 pixels at the model's input size; the
``serving_bytes`` signature takes encoded image files of any size and applies the
version's recorded preparation (:mod:`keras_blood.preparation`) in-graph first.
Everything else happens in-graph too, colour extraction included when the config
turns it on.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf

from keras_blood.color import make_preprocess
from keras_blood.config import Config, save_config
from keras_blood.errors import ExportError
from keras_blood.preparation import Preparation, decode, prepare

SIGNATURE = "serving_default"
BYTES_SIGNATURE = "serving_bytes"
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
    # A server sends whole images at the data's size; a cell crop (if any) happens in-graph.
    height, width = config.data.height_width
    channels = model.input_shape[-1]
    recipe = {"input_size": [height, width], **(preparation or {})}
    prep = Preparation.from_json(recipe)
    if prep.size != (height, width):
        raise ExportError(f"preparation resizes to {list(prep.size)} but the model takes {height}x{width}")
    base = config.output.export_dir / config.name
    base.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=base))
    try:
        archive = keras.export.ExportArchive()
        archive.track(model)

        preprocess = make_preprocess(config.data)
        # Recorded so that a reader of the version knows what happens in-graph.
        if config.data.cell_crop is not None:
            recipe["cell_crop"] = config.data.cell_crop.model_dump(mode="json")
        if config.data.color_extraction:
            recipe["color_extraction"] = config.data.color.model_dump(mode="json")

        def serve(pixels):
            if preprocess is not None:  # the same uint8 -> uint8 steps as in training
                pixels = preprocess(pixels)
            probabilities = model(tf.cast(pixels, tf.float32), training=False)
            return {OUTPUT_KEY: probabilities}

        def serve_bytes(images):
            pixels = tf.map_fn(
                lambda data: prepare(decode(data), prep),
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
        archive.write_out(str(staging), verbose=False)

        extra = staging / "assets.extra"
        extra.mkdir()
        save_config(config, extra / "config.yaml")
        (extra / "metrics.json").write_text(json.dumps(metrics, indent=2))
        (extra / "class_names.json").write_text(json.dumps(class_names, indent=2))
        (extra / "preparation.json").write_text(json.dumps(recipe, indent=2))
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


@dataclass(frozen=True)
class ExportedVersion:
    """A loaded version: its signatures and the files in ``assets.extra``."""

    path: Path
    loaded: Any  # keeps the SavedModel's variables alive as long as its signatures
    class_names: list[str]
    preparation: Preparation

    @property
    def serve(self):
        return self.loaded.signatures[SIGNATURE]

    @property
    def name(self) -> str:
        """The config name: ``saved_models/<name>/<number>``."""
        return self.path.resolve().parent.name

    @property
    def number(self) -> str:
        return self.path.resolve().name

    @property
    def extra(self) -> Path:
        return self.path / "assets.extra"


def load_version(path: str | Path) -> ExportedVersion:
    path = Path(path)
    if not (path / "saved_model.pb").is_file():
        raise ExportError(f"{path} is not an exported model version (no saved_model.pb)")
    extra = path / "assets.extra"
    try:
        class_names = json.loads((extra / "class_names.json").read_text())
        recipe = json.loads((extra / "preparation.json").read_text())
    except (OSError, ValueError) as exc:
        raise ExportError(f"{path}: unreadable assets.extra ({exc})") from None
    return ExportedVersion(path, _load_saved_model(path), class_names, Preparation.from_json(recipe))


def _load_saved_model(path: Path):
    """``tf.saved_model.load``, with a damaged version reported as an ExportError."""
    try:
        return tf.saved_model.load(str(path))
    # What TensorFlow raises for a damaged version: OSError for a missing variables/ folder
    # (FileNotFoundError) or a truncated saved_model.pb ("Cannot parse file"); OpError for a
    # missing or truncated file inside variables/; ValueError for an empty saved_model.pb
    # ("0 MetaGraphs").
    except (OSError, tf.errors.OpError, ValueError) as exc:
        reason = str(getattr(exc, "message", exc)).strip().splitlines()[0]
        reason = reason if len(reason) <= 160 else reason[:157] + "..."
        raise ExportError(
            f"{path}: this model version is damaged ({reason}); re-export it (train its config "
            "again) or use another version"
        ) from None


def load_exported(path: str | Path):
    """Load an exported version: ``(serving function, class names)``."""
    version = load_version(path)
    return version.serve, version.class_names
