"""VGG16 transfer learning: keras.applications.VGG16 without its top, and a new head."""

from __future__ import annotations

import keras
from keras import layers

from keras_blood.config.paths import weights_kind
from keras_blood.config.schema import VGG16Config
from keras_blood.errors import ConfigError
from keras_blood.models.registry import HEAD, model_inputs, register


@keras.saving.register_keras_serializable(package="keras_blood")
class VGG16Preprocess(layers.Layer):
    """keras.applications.vgg16.preprocess_input as a layer: RGB -> BGR, ImageNet means off."""

    def call(self, inputs):
        bgr = keras.ops.flip(inputs, axis=-1)
        return bgr - keras.ops.convert_to_tensor([103.939, 116.779, 123.68], dtype=inputs.dtype)


@register(VGG16Config)
def build_vgg16(cfg: VGG16Config, input_shape, num_classes) -> keras.Model:
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

    inputs = model_inputs(input_shape)
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
