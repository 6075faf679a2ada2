"""The Georgetown study's family: 3x (Conv2D + MaxPooling2D), one ReLU Dense, softmax Dense.

Its presets (``dropout03``, ``ridge`` ...) are data in :mod:`keras_blood.config.presets`.
"""

from __future__ import annotations

import keras
from keras import layers

from keras_blood.config.schema import GeorgetownConfig
from keras_blood.models.registry import HEAD, model_inputs, register


@register(GeorgetownConfig)
def build_georgetown(cfg: GeorgetownConfig, input_shape, num_classes) -> keras.Model:
    def regularizer():
        return keras.regularizers.L1L2(l1=cfg.l1, l2=cfg.l2) if cfg.l1 or cfg.l2 else None

    stack: list[layers.Layer] = [model_inputs(input_shape), layers.Rescaling(1 / 255)]
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
