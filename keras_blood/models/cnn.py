"""Paper 000's two models on BloodMNIST: a two-conv CNN and its one-layer feed-forward baseline."""

from __future__ import annotations

import keras
from keras import layers

from keras_blood.config.schema import CNNConfig, FNNConfig
from keras_blood.models.registry import HEAD, model_inputs, register


@register(CNNConfig)
def build_cnn(cfg: CNNConfig, input_shape, num_classes) -> keras.Model:
    stack: list[layers.Layer] = [model_inputs(input_shape), layers.Rescaling(1 / 255)]
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
            model_inputs(input_shape),
            layers.Rescaling(1 / 255),
            layers.Flatten(),
            layers.Dense(cfg.hidden_units, activation="relu"),
            layers.Dense(num_classes, activation="softmax", name=HEAD),
        ],
        name="fnn",
    )
