"""Temperature scaling as a layer: ``softmax(log(p) / T)`` on a model's probabilities.

The temperature is fitted in :mod:`keras_blood.evaluation.calibration`; the layer is what an
exported model carries.
"""

from __future__ import annotations

import keras
import numpy as np

# log(0) is -inf; the smallest normal float32 keeps it finite (about -87) for any p.
TINY = float(np.finfo(np.float32).tiny)


@keras.saving.register_keras_serializable(package="keras_blood")
class TemperatureScaling(keras.layers.Layer):
    """Probabilities in, calibrated probabilities out: ``softmax(log(p) / T)``."""

    def __init__(self, temperature: float, **kwargs):
        super().__init__(**kwargs)
        self.temperature = float(temperature)

    def call(self, probabilities):
        logits = keras.ops.log(keras.ops.maximum(probabilities, TINY))
        return keras.ops.softmax(logits / self.temperature, axis=-1)

    def get_config(self):
        return {**super().get_config(), "temperature": self.temperature}


def with_temperature(model: keras.Model, temperature: float) -> keras.Model:
    """``model`` with its probabilities scaled by ``temperature``, as one model."""
    inputs = keras.Input(shape=model.input_shape[1:], name="pixels")
    probabilities = TemperatureScaling(temperature, name="probabilities")(model(inputs))
    return keras.Model(inputs, probabilities, name=f"{model.name}_calibrated")
