"""A compact residual (or plain VGG-style) network for small inputs, with batch, group or layer norm."""

from __future__ import annotations

import keras
from keras import layers

from keras_blood.config.schema import ResNetConfig
from keras_blood.models.registry import HEAD, model_inputs, register


def _normalization(norm: str, filters: int) -> layers.Layer:
    if norm == "batch":
        # Momentum 0.9: the moving statistics settle within the few hundred steps of a CPU run.
        return layers.BatchNormalization(momentum=0.9)
    # Per image, at training and serving alike: nothing of the training lab's statistics is kept.
    return layers.GroupNormalization(groups=min(8, filters) if norm == "group" else 1)


def _conv_bn(x, filters: int, relu: bool = True, kernel_size: int = 3, norm: str = "batch"):
    # No conv bias: the normalisation that follows has its own.
    x = layers.Conv2D(filters, kernel_size, padding="same", use_bias=False)(x)
    x = _normalization(norm, filters)(x)
    return layers.ReLU()(x) if relu else x


@register(ResNetConfig)
def build_resnet(cfg: ResNetConfig, input_shape, num_classes) -> keras.Model:
    inputs = model_inputs(input_shape)
    x = layers.Rescaling(1 / 255)(inputs)
    if cfg.upsample > 1:
        # Finer feature maps for small images: more compute, no new information, but the
        # 3x3 kernels see each cell's nucleus over more positions (README, BloodMNIST).
        x = layers.UpSampling2D(cfg.upsample, interpolation="bilinear")(x)
    x = _conv_bn(x, cfg.widths[0], norm=cfg.norm)
    for stage, width in enumerate(cfg.widths):
        if stage:
            x = layers.MaxPooling2D()(x)
        for _ in range(cfg.blocks_per_stage):
            y = _conv_bn(_conv_bn(x, width, norm=cfg.norm), width, relu=not cfg.residual, norm=cfg.norm)
            if cfg.residual:
                shortcut = x if x.shape[-1] == width else _conv_bn(x, width, relu=False, kernel_size=1, norm=cfg.norm)
                y = layers.ReLU()(layers.Add()([y, shortcut]))
            x = y
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dropout(cfg.dropout)(x)
    # float32 softmax keeps probabilities exact under mixed precision.
    outputs = layers.Dense(num_classes, activation="softmax", dtype="float32", name=HEAD)(x)
    return keras.Model(inputs, outputs, name="resnet")
