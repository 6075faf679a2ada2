"""Export a trained model as a SavedModel in TensorFlow Serving's layout.

``<export_dir>/<output.name>/<version>/`` with integer versions that only increase (TF
Serving serves the highest). Each version is written to a hidden staging folder beside
the others (``.export-<host>-<pid>-<random>``), made readable by all (folders 0755, files
0644, so a server running as another user can load it) and renamed into place, so a crash
leaves no partial version and an earlier version is never overwritten.

A version is only published under a name whose newest version has the same signature
(input shape, dtype, class names in order): clients of that name keep working. Smoke runs
(``data.max_examples``) publish nothing unless ``output.publish`` is ``always``;
``output.publish_if_better`` publishes only a model that beats the newest version.

The ``serving_default`` signature takes raw uint8 pixels at the model's input size; the
``serving_bytes`` signature takes encoded image files of any size and applies the
version's recorded preparation (:mod:`keras_blood.preparation`) in-graph first.
Everything else happens in-graph too, colour extraction included when the config
turns it on. Beside them, ``model.keras`` keeps the same model (TTA and ensemble
wrappers included) in Keras's native format (:func:`load_keras_model`); the cell crop
and colour extraction are not in it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf

from keras_blood.segmentation import make_preprocess
from keras_blood.config import Config, save_config
from keras_blood.errors import ExportError
from keras_blood.preparation import Preparation, decode, prepare

SIGNATURE = "serving_default"
BYTES_SIGNATURE = "serving_bytes"
OUTPUT_KEY = "probabilities"
RUN_RECORD = "run.json"  # in assets.extra: the run folder a version came from
# The Keras model beside the SavedModel, which keeps no Keras layers: what explanations
# (keras_blood.explain) and other Keras-level tools load, with load_keras_model.
KERAS_MODEL = "model.keras"
STAGING_PREFIX = ".export-"
LEGACY_STAGING_MAX_AGE_S = 24 * 3600  # staging folders named without host and pid


class NotPublished(Exception):
    """Publishing was declined, which is not an error; the message says why, in one line."""


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


def export_base(config: Config) -> Path:
    """The served name's folder: ``output.export_dir/<output.name>``."""
    return config.output.export_dir / config.served_name


def skip_reason(config: Config) -> str | None:
    """Why a run of ``config`` publishes no version (``output.publish``), or None."""
    publish = config.output.publish
    if publish == "never":
        return "output.publish is never (--no-export)"
    if publish == "auto" and config.data.max_examples is not None:
        return (
            f"a smoke run (data.max_examples={config.data.max_examples}) is not published; "
            "--set output.publish=always to publish it"
        )
    return None


def should_publish(config: Config) -> bool:
    return skip_reason(config) is None


def read_signature(version: Path) -> Signature:
    """A published version's signature: its ``assets.extra/signature.json``, or for
    versions exported before that file existed, the SavedModel's ``serving_default``
    input (read from saved_model.pb, without loading the model) and its class names."""
    extra = version / "assets.extra"
    try:
        if (extra / "signature.json").is_file():
            recorded = json.loads((extra / "signature.json").read_text())
            return Signature(tuple(recorded["input_shape"]), recorded["dtype"], tuple(recorded["class_names"]))
        from tensorflow.core.protobuf import saved_model_pb2

        saved_model = saved_model_pb2.SavedModel.FromString((version / "saved_model.pb").read_bytes())
        (pixels,) = saved_model.meta_graphs[0].signature_def[SIGNATURE].inputs.values()
        shape = tuple(dim.size for dim in pixels.tensor_shape.dim[1:])  # without the batch
        class_names = tuple(json.loads((extra / "class_names.json").read_text()))
        return Signature(shape, tf.dtypes.as_dtype(pixels.dtype).name, class_names)
    except (OSError, ValueError, KeyError, IndexError) as exc:
        raise ExportError(
            f"{version}: cannot read the published version's signature ({exc!r}); "
            "remove that broken version or publish under another --set output.name=..."
        ) from None


def check_signature(config: Config, signature: Signature) -> None:
    """Refuse a model whose signature differs from that of the newest published version."""
    base = export_base(config)
    versions = existing_versions(base)
    if not versions:
        return
    published = read_signature(base / str(versions[-1]))
    if published != signature:
        name = config.served_name
        other = f"{name}-{config.data.name}" if not name.endswith(config.data.name) else f"{name}-2"
        raise ExportError(
            f"output.name {name!r}: version {versions[-1]} serves {published}, this model takes "
            f"{signature}; its clients would break. Publish it under another name: "
            f"--set output.name={other}"
        )


def check_export_target(config: Config, class_names: list[str], input_shape: tuple[int, ...]) -> None:
    """Before training: can a version of this model be published? (Nothing to check
    when the run will not publish.) The export folder must be writable and the served
    name's versions must have this model's signature; publishing checks the latter again."""
    if not should_publish(config):
        return
    base = export_base(config)
    folder = base if base.is_dir() else config.output.export_dir
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(prefix=".write-test-", dir=folder):
            pass
    except OSError as exc:
        raise ExportError(
            f"output.export_dir {str(config.output.export_dir)!r}: cannot write to {str(folder)!r} "
            f"({exc.strerror or exc}); --set output.export_dir=<a writable folder>"
        ) from None
    check_signature(config, Signature(tuple(input_shape), "uint8", tuple(class_names)))


def not_better_reason(config: Config, metrics: dict[str, Any]) -> str | None:
    """With ``output.publish_if_better``: why this model is not published (its test
    accuracy does not beat the newest version's), or None. Figures are compared only
    when both were evaluated on the same split and number of examples."""
    base = export_base(config)
    versions = existing_versions(base)
    if not config.output.publish_if_better or not versions:
        return None
    newest = versions[-1]
    try:
        published = json.loads((base / str(newest) / "assets.extra" / "metrics.json").read_text())
    except (OSError, ValueError):
        published = {}
    keys = ("split", "num_examples")
    theirs, ours = ({k: m.get(k) for k in keys} for m in (published, metrics))
    if theirs != ours or None in ours.values() or "accuracy" not in published or "accuracy" not in metrics:
        print(
            f"output.publish_if_better: version {newest} was evaluated on {theirs}, this model on "
            f"{ours}; publishing without comparing accuracies",
            flush=True,
        )
        return None
    if metrics["accuracy"] > published["accuracy"]:
        return None
    return (
        f"test accuracy {metrics['accuracy']:.4f} does not beat version {newest}'s "
        f"{published['accuracy']:.4f} (output.publish_if_better)"
    )


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9.-]", "_", socket.gethostname()) or "host"


def _process_is_dead(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        pass
    return False


def remove_stale_staging(base: Path) -> None:
    """Remove staging folders that a killed export left in ``base``: those of a dead
    process on this host, and legacy ones (no host and pid in the name) older than a day.
    Another host's, or a live process's, may still be in use and are left alone."""
    for path in base.glob(f"{STAGING_PREFIX}*"):
        if not path.is_dir():
            continue
        # .export-<host>-<pid>-<random>: the host may contain '-', the random part does not.
        owner = path.name[len(STAGING_PREFIX) :].rsplit("-", 2)
        if len(owner) == 3 and owner[1].isdigit():
            stale = owner[0] == _host() and _process_is_dead(int(owner[1]))
        else:
            try:
                stale = time.time() - path.stat().st_mtime > LEGACY_STAGING_MAX_AGE_S
            except OSError:  # removed meanwhile
                continue
        if stale:
            shutil.rmtree(path, ignore_errors=True)


def _make_readable(tree: Path) -> None:
    """Folders 0755 and files 0644: a server running as another user can load the version
    (mkdtemp makes the staging folder 0700)."""
    tree.chmod(0o755)
    for folder, subfolders, files in os.walk(tree):
        for name in subfolders:
            os.chmod(os.path.join(folder, name), 0o755)
        for name in files:
            os.chmod(os.path.join(folder, name), 0o644)


def export_model(
    model: keras.Model,
    config: Config,
    class_names: list[str],
    metrics: dict[str, Any],
    preparation: dict[str, Any] | None = None,
    run: Path | None = None,
) -> Path:
    """Publish a new version of ``output.name`` and return its folder.

    ``run``: the run folder that trained the model, recorded in ``assets.extra/run.json``
    (:func:`find_run_version` finds the version again, so a resumed run publishes once).

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
    check_export_target(config, class_names, signature.input_shape)
    reason = not_better_reason(config, metrics)
    if reason:
        raise NotPublished(reason)
    base = export_base(config)
    base.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(base)
    staging = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{_host()}-{os.getpid()}-", dir=base))
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
        model.save(staging / KERAS_MODEL)

        extra = staging / "assets.extra"
        extra.mkdir()
        save_config(config, extra / "config.yaml")
        (extra / "metrics.json").write_text(json.dumps(metrics, indent=2))
        (extra / "class_names.json").write_text(json.dumps(class_names, indent=2))
        (extra / "preparation.json").write_text(json.dumps(recipe, indent=2))
        (extra / "signature.json").write_text(json.dumps(signature.to_json(), indent=2))
        if run is not None:
            (extra / RUN_RECORD).write_text(json.dumps({"run_dir": str(Path(run).resolve())}, indent=2))
        _make_readable(staging)
        return _publish(staging, config, signature)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def find_run_version(config: Config, run: Path) -> Path | None:
    """The version that the run folder ``run`` published, if it published one."""
    base = export_base(config)
    for number in reversed(existing_versions(base)):
        try:
            record = json.loads((base / str(number) / "assets.extra" / RUN_RECORD).read_text())
        except (OSError, ValueError):
            continue
        if record.get("run_dir") == str(Path(run).resolve()):
            return base / str(number)
    return None


def _publish(staging: Path, config: Config, signature: Signature) -> Path:
    """Rename ``staging`` to the next free version number (atomic on one filesystem)."""
    base = staging.parent
    for _ in range(100):
        # Again, just before the rename: another run may have published meanwhile.
        check_signature(config, signature)
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
        """The served name (output.name): ``saved_models/<name>/<number>``."""
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


def load_keras_model(path: str | Path):
    """A version's Keras model (``model.keras``), loaded with ``safe_mode=True``."""
    path = Path(path)
    if not (path / "saved_model.pb").is_file():
        raise ExportError(f"{path} is not an exported model version (no saved_model.pb), e.g. saved_models/dropout03/1")
    if not (path / KERAS_MODEL).is_file():
        raise ExportError(
            f"{path} has no {KERAS_MODEL} (it was exported before versions kept their Keras model); "
            f"re-export it by training its config again: python -m keras_blood.train "
            f"{path / 'assets.extra' / 'config.yaml'}"
        )
    # Register the custom layers the file may name (TTA, VGG16's input, temperature scaling).
    import keras_blood.calibration  # noqa: F401
    import keras_blood.models  # noqa: F401

    try:
        return keras.saving.load_model(path / KERAS_MODEL, safe_mode=True, compile=False)
    except (OSError, ValueError, TypeError, KeyError) as exc:  # a truncated zip, an unknown layer
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        reason = reason if len(reason) <= 160 else reason[:157] + "..."
        raise ExportError(
            f"{path / KERAS_MODEL}: cannot load the Keras model ({reason}); re-export the version "
            "(train its config again) or use another version"
        ) from None


def load_exported(path: str | Path):
    """Load an exported version: ``(serving function, class names)``."""
    version = load_version(path)
    return version.serve, version.class_names
