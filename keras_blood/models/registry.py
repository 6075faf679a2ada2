"""Model registry: one Keras builder per model family, selected by the config's class
(a timm-style registry: each family's module registers its builder on import).

Every model takes float pixels in [0, 255] ``[N, H, W, 3]`` and returns class
probabilities; scaling and any resizing live inside the model, so the exported graph
needs nothing else.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable

import keras
from keras import layers

from keras_blood.config.schema import VGG16Config
from keras_blood.errors import ConfigError

Builder = Callable[..., keras.Model]
BUILDERS: dict[type, Builder] = {}


def register(config_class: type) -> Callable[[Builder], Builder]:
    def decorator(fn: Builder) -> Builder:
        BUILDERS[config_class] = fn
        return fn

    return decorator


HEAD = "probabilities"  # every model's last layer: the classes' softmax


def build_model(config, input_shape: tuple[int, int, int], num_classes: int) -> keras.Model:
    """Build the model that ``config`` (one of config.MODEL_CLASSES) describes, frozen
    before ``model.fine_tune_from``. Weights other than ImageNet's are put in by
    :mod:`keras_blood.training.transfer`."""
    model = BUILDERS[type(config)](config, tuple(input_shape), num_classes)
    if config.fine_tune_from is not None and not isinstance(config, VGG16Config):  # VGG16: its base's layers
        freeze_before(model, config.fine_tune_from)
    return model


def automatic_name(class_name: str) -> str:
    """The name Keras gives a layer of class ``class_name`` before numbering it: the class
    name in snake case (``Conv2D`` -> ``conv2d``, ``BatchNormalization`` ->
    ``batch_normalization``). Keras's own function for it is private; this is its rule."""
    name = re.sub(r"\W+", "", class_name)
    name = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower()


def named_layers(model: keras.Model, prefix: str = "") -> dict[str, layers.Layer]:
    """Every layer of ``model`` in order, a nested model's after it ("vgg16/block1_conv1"),
    under the name a freshly started process gives it. Keras numbers automatic names
    (``conv2d``, ``conv2d_1`` ...) across all a process builds, so the second model built
    names the same layers otherwise; these names do not depend on that."""
    counts: Counter[str] = Counter()
    named: dict[str, layers.Layer] = {}
    for layer in model.layers:
        name, automatic = layer.name, automatic_name(type(layer).__name__)
        if re.fullmatch(rf"{re.escape(automatic)}(_\d+)?", name):
            name = f"{automatic}_{counts[automatic]}" if counts[automatic] else automatic
            counts[automatic] += 1
        named[prefix + name] = layer
        if isinstance(layer, keras.Model):
            named.update(named_layers(layer, f"{prefix}{name}/"))
    return named


def freeze_before(model: keras.Model, first: str) -> None:
    """Make every layer before ``first`` (a :func:`named_layers` name) untrainable."""
    named = named_layers(model)
    if first not in named:
        weighted = [name for name, layer in named.items() if layer.weights and not isinstance(layer, keras.Model)]
        raise ConfigError(
            f"model.fine_tune_from = {first!r}: not a layer of this {model.name} model; "
            f"allowed: {', '.join(weighted)} or null (train all)"
        )
    for name in list(named)[: list(named).index(first)]:
        named[name].trainable = False


def model_inputs(input_shape) -> keras.KerasTensor:
    return keras.Input(shape=input_shape, name="pixels")
