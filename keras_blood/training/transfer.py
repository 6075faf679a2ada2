"""Weights from another keras-blood model: ``model.weights``, ``model.fine_tune_from`` and
``train.transfer_schedule``.

``model.weights`` is ``none``, ``imagenet`` (vgg16 only), a Keras weights file of this
very model (for vgg16: of its base, as keras.applications reads it), or another
keras-blood model:

- a run folder (``runs/<name>/<timestamp>``): its best checkpoint (an ensemble's: member
  1's), read into the model its ``config.yaml`` describes, rebuilt by this package;
- a checkpoint inside a run folder (``.../checkpoints/best.weights.h5``, ``member-<n>...``);
- an exported version (``saved_models/<name>/<n>``): its ``model.keras`` (the SavedModel's
  variables carry no layer names), the single model inside test-time augmentation or an
  ensemble's first member.

Layers are matched by name (:func:`keras_blood.models.named_layers`: the names a fresh
process gives them) and copied where all their weights have the same shapes. The head
(``probabilities``) gets the source's weights of each class both models have, matched by
name case-insensitively (BloodMNIST's ``eosinophil`` is the Kaggle folder ``EOSINOPHIL``),
and keeps its fresh initialisation for the others. Everything is read and checked before
the run folder exists: a path that is no keras-blood model, no layer matched, other input
channels are each one line (ConfigError, exit status 2).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras

from keras_blood.config.loading import load_config
from keras_blood.config.paths import EXTRA, RUN_CONFIG, weights_kind
from keras_blood.config.recipe import recipe
from keras_blood.config.schema import Config, VGG16Config
from keras_blood.data.sources.blood_cell_images.builder import FOLDERS, class_folders
from keras_blood.data.sources.blood_cell_images.loader import DEFAULT_ROOT
from keras_blood.data.sources.bloodmnist.builder import CLASS_NAMES
from keras_blood.errors import ConfigError, ExportError
from keras_blood.models.registry import HEAD, build_model, named_layers
from keras_blood.serving.version import load_keras_model
from keras_blood.training.backups import FINE_TUNE_BACKUP, METADATA
from keras_blood.training.runs import RunFolder

# ----------------------------------------------------------------------------- sources


@dataclass
class Source:
    """A keras-blood model to start from, its weights loaded."""

    path: Path  # the run folder, checkpoint or version model.weights names
    kind: str
    weights_file: Path  # the checkpoint or model.keras read
    config: Config  # the source's own config
    class_names: list[str]
    model: keras.Model

    def describe(self) -> str:
        data = self.config.data
        return f"{self.config.name} ({self.config.model.name} on {data.name}, {self.weights_file.name})"


def load_source(value: str, kind: str) -> Source:
    """The model that ``value`` (a ``run``, ``checkpoint`` or ``version``) names."""
    path = Path(value).expanduser().resolve()
    if kind == "version":
        return _version_source(value, path)
    run = RunFolder(path if kind == "run" else path.parent.parent)
    config = run.config
    checkpoint = path if kind == "checkpoint" else run.checkpoint(RunFolder.tag(0, config.train.ensemble))
    if not checkpoint.is_file():
        raise ConfigError(
            f"model.weights = {value!r}: the run has no checkpoint yet ({checkpoint} is missing: "
            "it finished no epoch); point at a run that trained"
        )
    class_names = _run_classes(run.path, config)
    # Its own weights setting is not rebuilt: the checkpoint holds them all.
    model = build_model(
        config.model.model_copy(update={"weights": "none"}), (*config.data.model_size, 3), len(class_names)
    )  # both data sources are RGB
    try:
        model.load_weights(str(checkpoint))
    except (ValueError, OSError) as exc:
        raise ConfigError(
            f"model.weights = {value!r}: {checkpoint} does not fit the model its run's config.yaml "
            f"describes ({_first_line(exc)})"
        ) from None
    return Source(path, kind, checkpoint, config, class_names, model)


def _run_classes(run: Path, config: Config) -> list[str]:
    """A run's classes: those its metrics.json lists, else those its config selects."""
    try:
        return list(json.loads((run / "metrics.json").read_text())["class_names"])
    except (OSError, ValueError, KeyError):
        pass
    data = config.data
    if data.classes:
        return list(data.classes)
    if data.name == "bloodmnist":
        return list(CLASS_NAMES)

    folder = (data.given_root() or DEFAULT_ROOT.expanduser()) / FOLDERS["train"]
    if folder.is_dir():
        return class_folders(folder)
    raise ConfigError(
        f"model.weights = {str(run)!r}: cannot tell the run's classes (no metrics.json, its data "
        f"folder {folder} is gone); point at a finished run"
    )


def _version_source(value: str, path: Path) -> Source:
    extra, keras_file = path / EXTRA, path / "model.keras"
    if not keras_file.is_file():
        try:
            trained_by = f" ({json.loads((extra / 'run.json').read_text())['run_dir']})"
        except (OSError, ValueError, KeyError):
            trained_by = ""
        raise ConfigError(
            f"model.weights = {value!r}: this version predates the model.keras file of published versions "
            f"(its SavedModel has no layer names); point model.weights at the run folder that trained it{trained_by}"
        )
    config = load_config(extra / RUN_CONFIG)
    try:
        class_names = json.loads((extra / "class_names.json").read_text())
        model = load_keras_model(path)
    except (OSError, ValueError, ExportError) as exc:
        raise ConfigError(f"model.weights = {value!r}: cannot read the version ({_first_line(exc)})") from None
    return Source(path, "version", keras_file, config, class_names, single_model(model, value))


def single_model(model: keras.Model, value: str) -> keras.Model:
    """The model inside test-time augmentation and ensemble averaging (the first member):
    the one whose head is the classes' Dense layer."""
    while not isinstance(named_layers(model).get(HEAD), keras.layers.Dense):
        inner = [layer for layer in model.layers if isinstance(layer, keras.Model)]
        if not inner:
            raise ConfigError(f"model.weights = {value!r}: not a keras-blood model (no {HEAD!r} layer)")
        model = inner[0]
    return model


def _first_line(exc: BaseException) -> str:
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return text if len(text) <= 200 else text[:197] + "..."


# ----------------------------------------------------------------------------- copying


def _weighted(model: keras.Model) -> dict[str, keras.layers.Layer]:
    return {
        n: layer for n, layer in named_layers(model).items() if layer.weights and not isinstance(layer, keras.Model)
    }


def _shapes(layer) -> str:
    shapes = [tuple(w.shape) for w in layer.weights]
    return ", ".join(map(str, shapes))


@dataclass
class Transfer:
    """Weights ``model.weights`` puts into each member built (after the build, before fit)."""

    value: str
    source: Source | None  # None: a plain Keras weights file of this very model
    copied: list[str] = field(default_factory=list)  # layers whose weights came from elsewhere
    record: dict[str, Any] = field(default_factory=dict)  # for metrics.json

    def apply(self, model: keras.Model, class_names: list[str]) -> str:
        """Put the weights in; returns the one line that says what was copied."""
        if self.source is None:
            return self._load_file(model)
        source, value = self.source, self.value
        theirs_shape, ours_shape = source.model.input_shape[1:], model.input_shape[1:]
        if theirs_shape[-1] != ours_shape[-1]:
            raise ConfigError(
                f"model.weights = {value!r}: the source model takes {'x'.join(map(str, theirs_shape))} "
                f"pixels, this one {'x'.join(map(str, ours_shape))}: the input channels differ"
            )
        theirs, ours = _weighted(source.model), _weighted(model)
        copied, skipped = [], {}
        for name, layer in ours.items():
            if name == HEAD:
                continue
            other = theirs.get(name)
            if other is None:
                skipped[name] = "not in the source"
            elif _shapes(other) != _shapes(layer):
                skipped[name] = f"shape {_shapes(other)} there, {_shapes(layer)} here"
            else:
                layer.set_weights(other.get_weights())
                copied.append(name)
        if not copied:
            first = next(iter(skipped.items()), None)
            raise ConfigError(
                f"model.weights = {value!r}: no layer of the source's {source.config.model.name} model "
                f"matches this {model.name} model by name and shape"
                + (f" ({first[0]}: {first[1]})" if first else "")
                + "; transfer between models of one family (with Flatten, of one input size)"
            )
        mapped, head = _map_head(theirs.get(HEAD), ours[HEAD], source.class_names, class_names)
        self.copied = copied
        self.record = {
            "source": str(source.path),
            "kind": source.kind,
            "weights_file": str(source.weights_file),
            "config_name": source.config.name,
            "model": source.config.model.name,
            "data": source.config.data.name,
            "input_shape": list(theirs_shape),
            "classes": list(source.class_names),
            "layers_copied": len(copied),
            "layers_with_weights": len(ours),
            "skipped": skipped,
            "head": head,
            "head_classes_mapped": mapped,
            "source_config": source.config.to_dict(),
        }
        listed = "; ".join(f"{name}: {why}" for name, why in list(skipped.items())[:3])
        more = f" and {len(skipped) - 3} more" if len(skipped) > 3 else ""
        ensemble = source.config.train.ensemble
        member = f", member 1 of {ensemble}" if ensemble > 1 and source.kind == "run" else ""
        return (
            f"Transfer from {source.path} ({source.describe()}{member}): {len(copied)} of {len(ours) - 1} "
            f"layers copied, head {head}" + (f"; skipped {listed}{more}" if skipped else "")
        )

    def _load_file(self, model: keras.Model) -> str:
        try:
            model.load_weights(self.value)
        except (ValueError, OSError) as exc:
            raise ConfigError(
                f"model.weights = {self.value!r}: not a weights file of this {model.name} model "
                f"({_first_line(exc)}); to start from another keras-blood model, give its run folder, "
                "checkpoint or published version"
            ) from None
        self.copied = [name for name in _weighted(model) if name != HEAD]
        self.record = {"source": str(Path(self.value).resolve()), "kind": "file", "layers_copied": len(self.copied)}
        return f"Weights from {self.value}: all {len(self.copied) + 1} layers with weights"


def _map_head(theirs, ours, their_classes: list[str], our_classes: list[str]) -> tuple[list[str], str]:
    """Copy the source head's weights of each class both have; (those classes, a note)."""
    index = {name.casefold(): i for i, name in enumerate(their_classes)}
    shared = [(j, index[name.casefold()]) for j, name in enumerate(our_classes) if name.casefold() in index]
    if theirs is None or not shared:
        return [], "new (no class in common with the source)"
    kernel, bias = ours.get_weights()
    their_kernel, their_bias = theirs.get_weights()
    if their_kernel.shape[0] != kernel.shape[0]:
        return [], f"new (it takes {kernel.shape[0]} features here, {their_kernel.shape[0]} there)"
    for ours_at, theirs_at in shared:
        kernel[:, ours_at], bias[ours_at] = their_kernel[:, theirs_at], their_bias[theirs_at]
    ours.set_weights([kernel, bias])
    return [our_classes[j] for j, _ in shared], f"mapped by class name for {len(shared)} of {len(our_classes)} classes"


def prepare_transfer(config: Config) -> Transfer | None:
    """What ``model.weights`` puts into each member after its build, read and checked now
    (None: nothing, or ImageNet / a base weights file that VGG16's builder reads itself);
    with ``model.weights_recipe: same``, the source's recipe checked against the config's."""
    value = config.model.weights
    kind = weights_kind(value)
    same = config.model.weights_recipe == "same"
    if same and kind not in ("run", "checkpoint", "version"):
        raise ConfigError(
            f"model.weights = {value!r}: model.weights_recipe 'same' fine-tunes a keras-blood model of this "
            "recipe, which it checks; set model.weights=<a published version, e.g. saved_models/wbc_labs/1> "
            "(or a run folder)"
        )
    if config.data.folder_classes == "subset" and kind in ("none", "imagenet"):
        raise ConfigError(
            f"model.weights = {value!r}: data.folder_classes 'subset' keeps classes the folder has no images of, "
            "whose weights must come from another model; set model.weights=<a published version>"
        )
    if kind in ("none", "imagenet") or (kind == "file" and isinstance(config.model, VGG16Config)):
        return None
    source = None if kind == "file" else load_source(value, kind)
    if same:
        check_same_recipe(config, source)
    return Transfer(value, source)


def check_same_recipe(config: Config, source: Source) -> None:
    """A ConfigError (one line) naming the first setting of the recipe that differs between
    ``config`` and the model ``source`` is: fine-tuned weights would see other pixels, or
    their outputs mean other classes."""
    theirs, ours = recipe(source.config, source.class_names), recipe(config, config.data.classes)
    for key in [*theirs, *(key for key in ours if key not in theirs)]:
        if theirs.get(key) == ours.get(key):
            continue
        there, here = theirs.get(key), ours.get(key)
        if key == "data.classes":
            there, here = source.class_names, config.data.classes
        raise ConfigError(
            f"model.weights = {str(source.path)!r} was trained with {key} = {_shown(there)}, this config has "
            f"{_shown(here)} (model.weights_recipe 'same'): fine-tune it with a config of its recipe "
            f"({_config_file(source)})"
        )


def _config_file(source: Source) -> Path:
    if source.kind == "version":
        return source.path / EXTRA / RUN_CONFIG
    return (source.path if source.kind == "run" else source.path.parent.parent) / RUN_CONFIG


def _shown(value: Any) -> str:
    return json.dumps(value) if value is not None else "none"


# ----------------------------------------------------------------------------- two stages


@dataclass
class Stage:
    """One ``fit`` of a member: up to epoch ``epochs``, backed up into ``backup_dir``;
    ``config`` and ``trainable`` (flags to set first) are None when the model is used as built."""

    backup_dir: Path
    epochs: int
    config: Config | None = None
    trainable: list[tuple[keras.layers.Layer, bool]] | None = None
    title: str = ""


def training_stages(config: Config, model: keras.Model, transfer: Transfer | None, backup_dir: Path) -> list[Stage]:
    """The fits of a member: one, or with ``train.transfer_schedule: two_stage`` first the
    head and the layers the weights did not come into (the others frozen) for
    ``head_epochs``, then the model as built (frozen before ``model.fine_tune_from``) at
    ``learning_rate * fine_tune_lr_factor``. Each stage has its own optimizer, so its own
    backup folder: a run killed in the second stage resumes in it."""
    t = config.train
    if t.transfer_schedule != "two_stage":
        return [Stage(backup_dir, t.epochs)]
    named = named_layers(model)
    # Else VGG16 on ImageNet's weights or a base weights file: the layers of its base.
    pretrained = set(transfer.copied) if transfer is not None else {name for name in named if "/" in name}
    as_built = [(layer, layer.trainable) for layer in named.values()]  # parents before their layers
    head_first = [(layer, name not in pretrained) for name, layer in _weighted(model).items()]

    def train_settings(**changes) -> Config:
        return config.model_copy(update={"train": t.model_copy(update=changes)})

    def epochs(first: int, last: int) -> str:
        return f"epoch {first}" if first == last else f"epochs {first}-{last}"

    fine_tune_rate = t.learning_rate * t.fine_tune_lr_factor
    unfrozen = f"from {config.model.fine_tune_from} on" if config.model.fine_tune_from else "all layers"
    stages = [
        Stage(
            backup_dir,
            t.head_epochs,
            train_settings(epochs=t.head_epochs),
            head_first,
            f"Stage 1 of 2: the head and the new layers, {epochs(1, t.head_epochs)}, learning rate {t.learning_rate:g}",
        ),
        Stage(
            backup_dir / FINE_TUNE_BACKUP,
            t.epochs,
            train_settings(epochs=t.epochs - t.head_epochs, learning_rate=fine_tune_rate),
            as_built,
            f"Stage 2 of 2: {unfrozen}, {epochs(t.head_epochs + 1, t.epochs)}, learning rate {fine_tune_rate:g}",
        ),
    ]
    # In the second stage once it committed an epoch (a kill before that starts it again).
    return stages[1:] if (backup_dir / FINE_TUNE_BACKUP / METADATA).is_file() else stages


def set_trainable(flags: list[tuple[keras.layers.Layer, bool]]) -> None:
    # In order: a nested model's flag is set on all its layers, then theirs are set again.
    for layer, trainable in flags:
        layer.trainable = trainable
