"""What a path in a config or on a command line names: a run folder, a checkpoint inside
one, an exported version, or a plain Keras weights file. Training, transfer and serving
all ask; the answer depends on the files alone, so it lives below all of them."""

from __future__ import annotations

from pathlib import Path

from keras_blood.config.quote import quoted
from keras_blood.errors import ConfigError, ExportError

RUN_CONFIG = "config.yaml"
STATUS = "status.json"  # a run folder's state (keras_blood.training.runs)
SAVED_MODEL = "saved_model.pb"
EXTRA = "assets.extra"  # a version's records beside the SavedModel (keras_blood.serving)


def is_run(path: Path) -> bool:
    return (path / RUN_CONFIG).is_file() and (path / STATUS).is_file()


def is_version(path: Path) -> bool:
    return (path / SAVED_MODEL).is_file() and (path / EXTRA / RUN_CONFIG).is_file()


def is_checkpoint(path: Path) -> bool:
    return path.name.endswith(".weights.h5") and path.parent.name == "checkpoints" and is_run(path.parent.parent)


def weights_kind(value: str) -> str:
    """What ``model.weights`` names: ``none``, ``imagenet``, ``run``, ``checkpoint``,
    ``version`` or ``file`` (a plain Keras weights file)."""
    if value.lower() in ("none", "imagenet"):
        return value.lower()
    path = Path(value).expanduser()
    try:
        if path.is_file():
            return "checkpoint" if is_checkpoint(path) else "file"
        exists = path.is_dir()
        if exists and is_run(path):
            return "run"
        if exists and is_version(path):
            return "version"
    except OSError as exc:  # a name too long to look up, a folder not to be read
        exists, why = False, exc.strerror or str(exc)
    else:
        why = "no such file or folder"
    if not exists:
        raise ConfigError(
            f"model.weights = {quoted(value)}: {why}; use none, a keras-blood run folder, "
            "checkpoint or published version, or a Keras weights file"
        )
    raise ConfigError(
        f"model.weights = {quoted(value)}: not a keras-blood run folder (config.yaml and {STATUS}) nor an "
        "published version (saved_model.pb and assets.extra/); e.g. runs/best/20250101-120000 "
        "or saved_models/best/3"
    )


def version_config_file(version_dir: Path) -> Path:
    """The config an exported version recorded (its ``assets.extra/config.yaml``); an
    ExportError where ``version_dir`` is not a version."""
    recorded = version_dir / EXTRA / RUN_CONFIG
    if not (version_dir / SAVED_MODEL).is_file() or not recorded.is_file():
        raise ExportError(
            f"{version_dir} is not a published model version (expected saved_model.pb and "
            "assets.extra/config.yaml, e.g. saved_models/dropout03/1)"
        )
    return recorded
