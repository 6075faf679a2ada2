"""Model registry: one Keras builder per model family, selected by the config's class.

Every model takes float pixels in [0, 255] ``[N, H, W, 3]`` and returns class
probabilities; scaling and any resizing live inside the model, so the exported graph
needs nothing else.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import keras
from keras import layers

from keras_blood.config import CNNConfig, FNNConfig, GeorgetownConfig, VGG16Config
from keras_blood.errors import ConfigError

Builder = Callable[..., keras.Model]
BUILDERS: dict[type, Builder] = {}


def register(config_class: type) -> Callable[[Builder], Builder]:
    def decorator(fn: Builder) -> Builder:
        BUILDERS[config_class] = fn
        return fn

    return decorator


def build_model(config, input_shape: tuple[int, int, int], num_classes: int) -> keras.Model:
    """Build the model that ``config`` (one of config.MODEL_CLASSES) describes."""
    return BUILDERS[type(config)](config, tuple(input_shape), num_classes)


def _inputs(input_shape) -> keras.KerasTensor:
    return keras.Input(shape=input_shape, name="pixels")


@register(CNNConfig)
def build_cnn(cfg: CNNConfig, input_shape, num_classes) -> keras.Model:
    stack: list[layers.Layer] = [_inputs(input_shape), layers.Rescaling(1 / 255)]
    for filters in cfg.filters:
        stack += [
            layers.Conv2D(filters, cfg.kernel_size, padding="same", activation="relu"),
            layers.MaxPooling2D(),
            layers.Dropout(cfg.conv_dropout),
        ]
    stack += [
        layers.Flatten(),
        layers.Dense(cfg.dense_units, activation="relu"),
        layers.Dropout(cfg.dense_dropout),
        layers.Dense(num_classes, activation="softmax", name="probabilities"),
    ]
    return keras.Sequential(stack, name="cnn")


@register(FNNConfig)
def build_fnn(cfg: FNNConfig, input_shape, num_classes) -> keras.Model:
    return keras.Sequential(
        [
            _inputs(input_shape),
            layers.Rescaling(1 / 255),
            layers.Flatten(),
            layers.Dense(cfg.hidden_units, activation="relu"),
            layers.Dense(num_classes, activation="softmax", name="probabilities"),
        ],
        name="fnn",
    )


@register(GeorgetownConfig)
def build_georgetown(cfg: GeorgetownConfig, input_shape, num_classes) -> keras.Model:
    def regularizer():
        return keras.regularizers.L1L2(l1=cfg.l1, l2=cfg.l2) if cfg.l1 or cfg.l2 else None

    stack: list[layers.Layer] = [_inputs(input_shape), layers.Rescaling(1 / 255)]
    for filters in cfg.filters:
        stack += [
            layers.Conv2D(
                filters,
                cfg.kernel_size,
                padding="same",
                activation="relu",
                kernel_regularizer=regularizer(),
            ),
            layers.MaxPooling2D(),
        ]
        if cfg.conv_dropout:
            stack.append(layers.Dropout(cfg.conv_dropout))
    stack += [layers.Flatten(), layers.Dense(cfg.dense_units, "relu", kernel_regularizer=regularizer())]
    if cfg.dense_dropout:
        stack.append(layers.Dropout(cfg.dense_dropout))
    stack.append(layers.Dense(num_classes, activation="softmax", name="probabilities"))
    return keras.Sequential(stack, name=cfg.name)


@keras.saving.register_keras_serializable(package="keras_blood")
class VGG16Preprocess(layers.Layer):
    """keras.applications.vgg16.preprocess_input as a layer: RGB -> BGR, ImageNet means off."""

    def call(self, inputs):
        bgr = keras.ops.flip(inputs, axis=-1)
        return bgr - keras.ops.convert_to_tensor([103.939, 116.779, 123.68], dtype=inputs.dtype)


@register(VGG16Config)
def build_vgg16(cfg: VGG16Config, input_shape, num_classes) -> keras.Model:
    weights = {"imagenet": "imagenet", "none": None}.get(cfg.weights.lower(), cfg.weights)
    if weights not in ("imagenet", None) and not Path(weights).is_file():
        raise ConfigError(
            f"model.weights = {cfg.weights!r}: no such file; use imagenet, none or a weights file path"
        )
    height, width, channels = input_shape
    size = (max(height, cfg.min_input_size), max(width, cfg.min_input_size))
    base = keras.applications.VGG16(
        include_top=False, weights=weights, input_shape=(*size, channels)
    )
    if cfg.fine_tune_from is None:
        base.trainable = False
    else:
        names = [layer.name for layer in base.layers]
        if cfg.fine_tune_from not in names:
            raise ConfigError(
                f"model.fine_tune_from = {cfg.fine_tune_from!r}: not a VGG16 layer; "
                f"allowed: {', '.join(n for n in names if 'conv' in n)} or null (frozen)"
            )
        first = names.index(cfg.fine_tune_from)
        for layer in base.layers[:first]:
            layer.trainable = False

    inputs = _inputs(input_shape)
    x = inputs
    if size != (height, width):
        # VGG16 needs at least 32x32; small inputs are upsampled inside the model.
        x = layers.Resizing(*size, interpolation="bilinear")(x)
    x = VGG16Preprocess()(x)
    # A frozen base runs in inference mode, the usual transfer-learning practice.
    x = base(x, training=False if cfg.fine_tune_from is None else None)
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dense(cfg.dense_units, activation="relu")(x)
    x = layers.Dropout(cfg.dense_dropout)(x)
    outputs = layers.Dense(num_classes, activation="softmax", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="vgg16")
