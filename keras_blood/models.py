"""Model registry: one Keras builder per model family, selected by the config's class.

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
from keras.src.utils.naming import to_snake_case  # how Keras names a layer after its class

from keras_blood.config import CNNConfig, FNNConfig, GeorgetownConfig, ResNetConfig, VGG16Config
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
    :mod:`keras_blood.transfer`."""
    model = BUILDERS[type(config)](config, tuple(input_shape), num_classes)
    if config.fine_tune_from is not None and not isinstance(config, VGG16Config):  # VGG16: its base's layers
        freeze_before(model, config.fine_tune_from)
    return model


def named_layers(model: keras.Model, prefix: str = "") -> dict[str, layers.Layer]:
    """Every layer of ``model`` in order, a nested model's after it ("vgg16/block1_conv1"),
    under the name a freshly started process gives it. Keras numbers automatic names
    (``conv2d``, ``conv2d_1`` ...) across all a process builds, so the second model built
    names the same layers otherwise; these names do not depend on that."""
    counts: Counter[str] = Counter()
    named: dict[str, layers.Layer] = {}
    for layer in model.layers:
        name, automatic = layer.name, to_snake_case(type(layer).__name__)
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
        layers.Dense(num_classes, activation="softmax", name=HEAD),
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
            layers.Dense(num_classes, activation="softmax", name=HEAD),
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
    stack.append(layers.Dense(num_classes, activation="softmax", name=HEAD))
    return keras.Sequential(stack, name=cfg.name)


@keras.saving.register_keras_serializable(package="keras_blood")
class VGG16Preprocess(layers.Layer):
    """keras.applications.vgg16.preprocess_input as a layer: RGB -> BGR, ImageNet means off."""

    def call(self, inputs):
        bgr = keras.ops.flip(inputs, axis=-1)
        return bgr - keras.ops.convert_to_tensor([103.939, 116.779, 123.68], dtype=inputs.dtype)


@register(VGG16Config)
def build_vgg16(cfg: VGG16Config, input_shape, num_classes) -> keras.Model:
    from keras_blood.transfer import weights_kind

    # A keras-blood run's weights are copied in after the build; a plain file is the base's.
    weights = {"imagenet": "imagenet", "file": cfg.weights}.get(weights_kind(cfg.weights))
    height, width, channels = input_shape
    size = (max(height, cfg.min_input_size), max(width, cfg.min_input_size))
    try:
        base = keras.applications.VGG16(include_top=False, weights=weights, input_shape=(*size, channels))
    except Exception as exc:  # Keras raises a bare Exception when the weights download fails
        if weights != "imagenet":
            raise
        raise ConfigError(
            f"model.weights = 'imagenet': could not get the ImageNet weights ({exc}); "
            "go online once (Keras caches them in ~/.keras/models), or use "
            "--set model.weights=none or a path to a weights file"
        ) from None
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
    outputs = layers.Dense(num_classes, activation="softmax", name=HEAD)(x)
    return keras.Model(inputs, outputs, name="vgg16")


def _conv_bn(x, filters: int, relu: bool = True, kernel_size: int = 3):
    # No conv bias: the batch norm that follows has its own.
    x = layers.Conv2D(filters, kernel_size, padding="same", use_bias=False)(x)
    # Momentum 0.9: the moving statistics settle within the few hundred steps of a CPU run.
    x = layers.BatchNormalization(momentum=0.9)(x)
    return layers.ReLU()(x) if relu else x


@register(ResNetConfig)
def build_resnet(cfg: ResNetConfig, input_shape, num_classes) -> keras.Model:
    inputs = _inputs(input_shape)
    x = layers.Rescaling(1 / 255)(inputs)
    if cfg.upsample > 1:
        # Finer feature maps for small images: more compute, no new information, but the
        # 3x3 kernels see each cell's nucleus over more positions (README, BloodMNIST).
        x = layers.UpSampling2D(cfg.upsample, interpolation="bilinear")(x)
    x = _conv_bn(x, cfg.widths[0])
    for stage, width in enumerate(cfg.widths):
        if stage:
            x = layers.MaxPooling2D()(x)
        for _ in range(cfg.blocks_per_stage):
            y = _conv_bn(_conv_bn(x, width), width, relu=not cfg.residual)
            if cfg.residual:
                shortcut = x if x.shape[-1] == width else _conv_bn(x, width, relu=False, kernel_size=1)
                y = layers.ReLU()(layers.Add()([y, shortcut]))
            x = y
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dropout(cfg.dropout)(x)
    # float32 softmax keeps probabilities exact under mixed precision.
    outputs = layers.Dense(num_classes, activation="softmax", dtype="float32", name=HEAD)(x)
    return keras.Model(inputs, outputs, name="resnet")


# ----------------------------------------------------------------------------- ensembles


def average_models(models: list[keras.Model]) -> keras.Model:
    """One model whose probabilities are the mean of ``models``' (one model: itself).

    The members keep their weights and names, which must differ (train.py numbers them).
    """
    if len(models) == 1:
        return models[0]
    inputs = keras.Input(shape=models[0].input_shape[1:], name="pixels")
    probabilities = layers.Average(name="probabilities")([member(inputs) for member in models])
    return keras.Model(inputs, probabilities, name=f"ensemble_of_{len(models)}")


# ----------------------------------------------------------------------------- TTA


@keras.saving.register_keras_serializable(package="keras_blood")
class DihedralViews(layers.Layer):
    """Stack the views of each image along the batch: ``[B, ...] -> [V * B, ...]``.

    ``flip``: identity and left-right flip. ``d4``: the 8 symmetries of a square
    (4 rotations, each also flipped). Cells have no orientation, so every view is a
    fair look at the same cell.
    """

    def __init__(self, mode: str = "d4", **kwargs):
        super().__init__(**kwargs)
        self.mode = mode

    def views(self, x):
        if self.mode == "flip":
            return [x, keras.ops.flip(x, axis=2)]
        rotations = [x] + [keras.ops.rot90(x, k=k, axes=(1, 2)) for k in (1, 2, 3)]
        return rotations + [keras.ops.flip(r, axis=2) for r in rotations]

    def call(self, x):
        return keras.ops.concatenate(self.views(x), axis=0)

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


@keras.saving.register_keras_serializable(package="keras_blood")
class ViewMean(layers.Layer):
    """Average ``[V * B, K]`` predictions back to ``[B, K]``."""

    def __init__(self, num_views: int, **kwargs):
        super().__init__(**kwargs)
        self.num_views = num_views

    def call(self, x):
        return keras.ops.mean(keras.ops.reshape(x, (self.num_views, -1, x.shape[-1])), axis=0)

    def get_config(self):
        return {**super().get_config(), "num_views": self.num_views}


def with_tta(model: keras.Model, mode: str) -> keras.Model:
    """``model`` averaged over test-time views (``none`` returns it unchanged)."""
    if mode == "none":
        return model
    height, width = model.input_shape[1:3]
    if mode == "d4" and height != width:
        raise ConfigError(f"eval.tta = 'd4' needs square inputs, got {height}x{width}; use 'flip'")
    views = DihedralViews(mode)
    inputs = keras.Input(shape=model.input_shape[1:], name="pixels")
    probabilities = ViewMean(2 if mode == "flip" else 8, name="probabilities")(model(views(inputs)))
    return keras.Model(inputs, probabilities, name=f"{model.name}_tta_{mode}")
