"""A compact residual (or plain VGG-style) network with batch norm for small inputs."""

from __future__ import annotations

import keras
from keras import layers

from keras_blood.config.schema import ResNetConfig
from keras_blood.models.registry import HEAD, model_inputs, register


def _conv_bn(x, filters: int, relu: bool = True, kernel_size: int = 3):
    # No conv bias: the batch norm that follows has its own.
    x = layers.Conv2D(filters, kernel_size, padding="same", use_bias=False)(x)
    # Momentum 0.9: the moving statistics settle within the few hundred steps of a CPU run.
    x = layers.BatchNormalization(momentum=0.9)(x)
    return layers.ReLU()(x) if relu else x


@register(ResNetConfig)
def build_resnet(cfg: ResNetConfig, input_shape, num_classes) -> keras.Model:
    inputs = model_inputs(input_shape)
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
