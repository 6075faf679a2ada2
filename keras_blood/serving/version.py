"""A published version on disk: ``<output.publish_dir>/<name>/<number>/``, its signature, and how
to load it (the SavedModel for serving, ``model.keras`` for Keras-level tools)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2

import keras_blood.models  # noqa: F401  (registers the custom layers a model.keras may name)
from keras_blood.config.paths import EXTRA, SAVED_MODEL
from keras_blood.errors import ExportError
from keras_blood.preparation.decode import Preparation

SIGNATURE = "serving_default"


BYTES_SIGNATURE = "serving_bytes"


OUTPUT_KEY = "probabilities"


RUN_RECORD = "run.json"  # in assets.extra: the run folder a version came from


# The Keras model beside the SavedModel, which keeps no Keras layers: what explanations
# (keras_blood.explain) and other Keras-level tools load, with load_keras_model.
KERAS_MODEL = "model.keras"


@dataclass(frozen=True)
class Signature:
    """What a client of a served name relies on: the pixels it sends, the classes it gets."""

    input_shape: tuple[int, ...]  # (height, width, channels)
    dtype: str
    class_names: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"input_shape": list(self.input_shape), "dtype": self.dtype, "class_names": list(self.class_names)}

    def __str__(self) -> str:
        shape = "x".join(map(str, self.input_shape))
        return f"{self.dtype} {shape} -> {len(self.class_names)} classes [{', '.join(self.class_names)}]"


def existing_versions(base: Path) -> list[int]:
    if not base.is_dir():
        return []
    return sorted(int(p.name) for p in base.iterdir() if p.is_dir() and p.name.isdigit())


def read_signature(version: Path) -> Signature:
    """A published version's signature: its ``assets.extra/signature.json``, or for
    versions exported before that file existed, the SavedModel's ``serving_default``
    input (read from saved_model.pb, without loading the model) and its class names."""
    extra = version / EXTRA
    try:
        if (extra / "signature.json").is_file():
            recorded = json.loads((extra / "signature.json").read_text())
            return Signature(tuple(recorded["input_shape"]), recorded["dtype"], tuple(recorded["class_names"]))
        saved_model = saved_model_pb2.SavedModel.FromString((version / SAVED_MODEL).read_bytes())
        (pixels,) = saved_model.meta_graphs[0].signature_def[SIGNATURE].inputs.values()
        shape = tuple(dim.size for dim in pixels.tensor_shape.dim[1:])  # without the batch
        class_names = tuple(json.loads((extra / "class_names.json").read_text()))
        return Signature(shape, tf.dtypes.as_dtype(pixels.dtype).name, class_names)
    except (OSError, ValueError, KeyError, IndexError) as exc:
        raise ExportError(
            f"{version}: cannot read the published version's signature ({exc!r}); "
            "remove that broken version or publish under another --set output.name=..."
        ) from None


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
        """The served name (output.name): ``saved_models/<name>/<number>``."""
        return self.path.resolve().parent.name

    @property
    def number(self) -> str:
        return self.path.resolve().name

    @property
    def extra(self) -> Path:
        return self.path / EXTRA


def load_version(path: str | Path) -> ExportedVersion:
    path = Path(path)
    if not (path / SAVED_MODEL).is_file():
        raise ExportError(f"{path} is not a published model version (no saved_model.pb)")
    class_names, recipe = read_records(path)
    return ExportedVersion(path, _load_saved_model(path), class_names, Preparation.from_json(recipe))


def read_records(path: Path) -> tuple[list[str], dict[str, Any]]:
    """A version's class names and preparation recipe (as recorded: JSON), from its files."""
    extra = path / EXTRA
    try:
        return json.loads((extra / "class_names.json").read_text()), json.loads(
            (extra / "preparation.json").read_text()
        )
    except (OSError, ValueError) as exc:
        raise ExportError(f"{path}: unreadable assets.extra ({exc})") from None


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
            f"{path}: this model version is damaged ({reason}); publish a new one (train its config "
            "again) or use another version"
        ) from None


def load_keras_model(path: str | Path):
    """A version's Keras model (``model.keras``), loaded with ``safe_mode=True``."""
    path = Path(path)
    if not (path / SAVED_MODEL).is_file():
        raise ExportError(f"{path} is not a published model version (no saved_model.pb), e.g. saved_models/dropout03/1")
    if not (path / KERAS_MODEL).is_file():
        raise ExportError(
            f"{path} has no {KERAS_MODEL} (it was published before versions kept their Keras model); "
            f"publish a new one by training its config again: python -m keras_blood.train "
            f"{path / 'assets.extra' / 'config.yaml'}"
        )
    # Register the custom layers the file may name (TTA, VGG16's input, temperature scaling).

    try:
        return keras.saving.load_model(path / KERAS_MODEL, safe_mode=True, compile=False)
    except (OSError, ValueError, TypeError, KeyError) as exc:  # a truncated zip, an unknown layer
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        reason = reason if len(reason) <= 160 else reason[:157] + "..."
        raise ExportError(
            f"{path / KERAS_MODEL}: cannot load the Keras model ({reason}); publish a new "
            "version (train its config again) or use another version"
        ) from None


def load_exported(path: str | Path):
    """Load an exported version: ``(serving function, class names)``."""
    version = load_version(path)
    return version.serve, version.class_names
