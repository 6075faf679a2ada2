"""Ensembles: several trained members as one model that averages their probabilities."""

from __future__ import annotations

import keras
from keras import layers


def average_models(models: list[keras.Model]) -> keras.Model:
    """One model whose probabilities are the mean of ``models``' (one model: itself).

    The members keep their weights and names, which must differ (the Task numbers them: training/task.py).
    """
    if len(models) == 1:
        return models[0]
    inputs = keras.Input(shape=models[0].input_shape[1:], name="pixels")
    probabilities = layers.Average(name="probabilities")([member(inputs) for member in models])
    return keras.Model(inputs, probabilities, name=f"ensemble_of_{len(models)}")
