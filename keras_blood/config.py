"""Experiment configs: one YAML file per experiment, parsed into typed, validated objects.

A config file maps 1:1 onto :class:`Config`. Every command also takes ``--set key=value``
overrides with dotted keys (``--set train.epochs=3 --set data.root=/data``); values are
parsed as YAML, so ``3`` is an int, ``true`` a bool and ``[32, 64]`` a list.

This module imports no TensorFlow, so a bad config is reported in a fraction of a second,
before anything heavy is loaded or written.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from keras_blood.errors import ConfigError

DATA_ROOT_ENV = "KERAS_BLOOD_DATA_ROOT"


class _Strict(BaseModel):
    # Unknown keys are errors: a typo must not silently fall back to a default.
    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())


# ----------------------------------------------------------------------------- data


class DataConfig(_Strict):
    name: Literal["bloodmnist"] = "bloodmnist"
    root: Path | None = Field(
        default=None,
        description=f"Data folder. Default: ${DATA_ROOT_ENV}, else the data source's own "
        "default (~/.medmnist for BloodMNIST, the cache medmnist itself uses).",
    )
    image_size: Literal[28, 64, 128, 224] = 28
    max_examples: Annotated[int, Field(gt=0)] | None = Field(
        default=None, description="Cap on examples per split, for quick smoke runs."
    )
    download: bool = Field(default=True, description="Download missing files.")
    shuffle_buffer: Annotated[int, Field(gt=0)] = 20_000

    def resolved_root(self, default: Path) -> Path:
        if self.root is not None:
            return self.root.expanduser()
        if os.environ.get(DATA_ROOT_ENV):
            return Path(os.environ[DATA_ROOT_ENV]).expanduser()
        return default.expanduser()


# ----------------------------------------------------------------------------- models
#
# Each model family is one parameter class; its `name` field is the registry key that
# `keras_blood.models` maps to a builder. Families with named presets (the Georgetown
# models) fill their defaults from the preset, so `name: dropout03` alone is a full model.

Rate = Annotated[float, Field(ge=0.0, lt=1.0)]
Positive = Annotated[int, Field(gt=0)]


class CNNConfig(_Strict):
    """Paper 000: two conv layers, each followed by pooling and dropout, then a dense head.

    The paper gives no widths; 32/64 filters and a 128-unit head are the common choice
    for 28x28 inputs.
    """

    name: Literal["cnn"]
    filters: tuple[Positive, Positive] = (32, 64)
    kernel_size: Positive = 3
    conv_dropout: Rate = 0.25
    dense_units: Positive = 128
    dense_dropout: Rate = 0.5


class FNNConfig(_Strict):
    """Paper 000's baseline: flattened pixels, one hidden ReLU layer, softmax."""

    name: Literal["fnn"]
    hidden_units: Positive = 128


GEORGETOWN_PRESETS: dict[str, dict[str, Any]] = {
    "basic": {},
    "dropout01": {"dense_dropout": 0.1},
    "dropout03": {"dense_dropout": 0.3},
    "dropout01x3": {"conv_dropout": 0.1},  # one Dropout(0.1) after each of the 3 blocks
    "lasso": {"l1": 1e-4},
    "ridge": {"l2": 1e-3},
    "ridge_dropout01": {"l2": 1e-3, "dense_dropout": 0.1},
}


class GeorgetownConfig(_Strict):
    """The Georgetown family: 3x (Conv2D + MaxPooling2D), one ReLU Dense, softmax Dense.

    Presets differ only in dropout and kernel regularisation. The paper gives no widths;
    16/32/32 filters and 40 dense units make the ~27k-parameter model it describes at
    28x28x3 inputs.
    """

    name: Literal[tuple(GEORGETOWN_PRESETS)]  # type: ignore[valid-type]
    filters: tuple[Positive, Positive, Positive] = (16, 32, 32)
    kernel_size: Positive = 3
    dense_units: Positive = 40
    conv_dropout: Rate = 0.0
    dense_dropout: Rate = 0.0
    l1: Annotated[float, Field(ge=0.0)] = 0.0
    l2: Annotated[float, Field(ge=0.0)] = 0.0

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, values: Any) -> Any:
        if isinstance(values, dict) and values.get("name") in GEORGETOWN_PRESETS:
            return {**GEORGETOWN_PRESETS[values["name"]], **values}
        return values


class VGG16Config(_Strict):
    """VGG16 transfer learning: keras.applications.VGG16 without its top, new head.

    ``weights``: ``imagenet`` (downloaded by Keras), ``none`` (random init) or a path to
    a weights file. ``fine_tune_from``: ``null`` keeps the base frozen; a layer name such
    as ``block5_conv1`` trains that layer and everything after it.
    """

    name: Literal["vgg16"]
    weights: str = "imagenet"
    fine_tune_from: str | None = None
    min_input_size: Annotated[int, Field(ge=32)] = 32
    dense_units: Positive = 256
    dense_dropout: Rate = 0.5


class ResNetConfig(_Strict):
    """A compact residual (or plain VGG-style) network with batch norm for small inputs.

    A 3x3 stem, then one stage per entry of ``widths`` at full, 1/2, 1/4 ... resolution
    (max pooling between stages, none before the first: 28x28 has no pixels to spare),
    ``blocks_per_stage`` blocks of two 3x3 conv + BN each, global average pooling,
    dropout and a softmax layer.
    """

    name: Literal["resnet"]
    widths: tuple[Positive, ...] = (32, 64, 128)
    blocks_per_stage: Positive = 1
    residual: bool = True
    dropout: Rate = 0.2


MODEL_CLASSES = (CNNConfig, FNNConfig, GeorgetownConfig, VGG16Config, ResNetConfig)
ModelConfig = Annotated[
    Union[MODEL_CLASSES],  # type: ignore[valid-type]
    Field(discriminator="name"),
]

# ----------------------------------------------------------------------------- training


class AugmentConfig(_Strict):
    """Training-time augmentation, applied per batch in tf.data (vectorised).

    Blood cells have no orientation, so flips and 90-degree rotations are label-preserving;
    mild brightness / contrast / saturation jitter mimics stain and lighting variation.
    All off by default, so the paper models train as published.
    """

    flip: bool = False
    rot90: bool = Field(default=False, description="0/90/180/270 (0/180 for non-square inputs)")
    brightness: Annotated[float, Field(ge=0.0, le=1.0)] = Field(
        default=0.0, description="max shift as a fraction of 255"
    )
    contrast: Annotated[float, Field(ge=0.0, lt=1.0)] = Field(default=0.0, description="max factor change")
    saturation: Annotated[float, Field(ge=0.0, lt=1.0)] = Field(default=0.0, description="max factor change")
    mixup_alpha: Annotated[float, Field(ge=0.0)] = Field(default=0.0, description="0 disables MixUp")

    @property
    def enabled(self) -> bool:
        return any(
            (self.flip, self.rot90, self.brightness, self.contrast, self.saturation, self.mixup_alpha)
        )


class EvalConfig(_Strict):
    tta: Literal["none", "flip", "d4"] = Field(
        default="none",
        description="test-time augmentation averaged inside the evaluated and exported model: "
        "flip (identity + horizontal flip) or d4 (the 8 flips/rotations of a square image)",
    )


class TrainConfig(_Strict):
    epochs: Positive = 30
    batch_size: Positive = 128
    learning_rate: Annotated[float, Field(gt=0.0)] = 1e-3
    optimizer: Literal["adam", "adamw", "sgd", "rmsprop"] = "adam"
    weight_decay: Annotated[float, Field(ge=0.0)] = 0.0
    schedule: Literal["constant", "cosine"] = "constant"
    warmup_epochs: Annotated[int, Field(ge=0)] = 0
    label_smoothing: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0
    early_stopping_patience: Annotated[int, Field(ge=0)] = Field(
        default=8, description="Epochs without val_loss improvement before stopping; 0 disables."
    )
    jit_compile: bool = Field(default=False, description="XLA; slower on small CPUs, opt in.")
    distribute: Literal["auto", "none", "mirrored", "multi_worker"] = Field(
        default="auto",
        description="auto: MultiWorkerMirrored when TF_CONFIG is set, Mirrored on >1 GPU, "
        "else the default strategy.",
    )
    deterministic: bool = Field(default=False, description="TF op determinism (slower).")
    mixed_precision: bool = Field(
        default=False, description="mixed_bfloat16 compute (fast on GPUs and CPUs with bf16 units)"
    )


class OutputConfig(_Strict):
    runs_dir: Path = Path("runs")
    export_dir: Path = Path("saved_models")


class Config(_Strict):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$")]
    seed: int = 42
    data: DataConfig = DataConfig()
    model: ModelConfig
    augment: AugmentConfig = AugmentConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    output: OutputConfig = OutputConfig()

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


# ----------------------------------------------------------------------------- loading


def parse_override(item: str) -> tuple[list[str], Any]:
    """``"train.epochs=3"`` -> ``(["train", "epochs"], 3)``."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip() or any(not part for part in key.strip().split(".")):
        raise ConfigError(
            f"--set {item!r}: expected KEY=VALUE with a dotted key, e.g. --set train.epochs=3"
        )
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {item!r}: the value is not valid YAML ({exc})") from None
    return key.strip().split("."), value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for item in overrides:
        path, value = parse_override(item)
        node = raw
        for i, part in enumerate(path[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                dotted = ".".join(path[: i + 1])
                raise ConfigError(f"--set {item!r}: {dotted} is {child!r}, not a section")
            node = child
        node[path[-1]] = value
    return raw


def _section_class(loc: list[str], raw: dict[str, Any]) -> type[BaseModel] | None:
    """The config class that holds the key at ``loc`` (for listing the allowed keys)."""
    cls: type[BaseModel] = Config
    for part in loc[:-1]:
        if cls is Config and part == "model":
            name = raw.get("model", {}).get("name") if isinstance(raw.get("model"), dict) else None
            cls = next((c for c in MODEL_CLASSES if name in c.model_fields["name"].annotation.__args__), None)
        else:
            field = cls.model_fields.get(part) if cls else None
            cls = field.annotation if field and isinstance(field.annotation, type) else None
        if cls is None or not issubclass(cls, BaseModel):
            return None
    return cls


def _format_error(err: dict[str, Any], raw: dict[str, Any]) -> str:
    loc = [str(p) for p in err["loc"]]
    # Discriminated unions put the tag in the location ("model.cnn.filters"); drop it.
    if len(loc) >= 2 and loc[0] == "model" and isinstance(raw.get("model"), dict):
        if loc[1] == str(raw["model"].get("name")):
            loc.pop(1)
    key = ".".join(loc) or "<root>"
    if err["type"] == "union_tag_invalid":
        return f"{key}.name = {err['ctx']['tag']!r}: unknown model; allowed: {err['ctx']['expected_tags']}"
    if err["type"] == "extra_forbidden":
        section = _section_class(loc, raw)
        allowed = f"; allowed keys here: {', '.join(section.model_fields)}" if section else ""
        return f"{key}: unknown key (value {err['input']!r}){allowed}"
    if err["type"] == "missing":
        return f"{key}: required key is missing"
    return f"{key} = {err['input']!r}: {err['msg']}"


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Read a YAML config, apply ``--set`` overrides and validate it.

    Raises :class:`ConfigError` with one message naming every bad key and value.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist (see configs/ for examples)")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top level")
    raw.setdefault("name", path.stem)
    raw = apply_overrides(raw, list(overrides or []))
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(_format_error(e, raw) for e in exc.errors())
        raise ConfigError(f"{path}: {problems}") from None


def save_config(config: Config, path: Path) -> None:
    path.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
