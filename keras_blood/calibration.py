"""Temperature scaling (Guo et al. 2017): one scalar T, fitted on the validation split,
that makes the exported model's probabilities match how often it is right.

The models end in a softmax (an ensemble or TTA averages probabilities), so the
"logits" are ``log p``: ``softmax(log(p) / T)`` is temperature scaling of the logits
(softmax ignores the constant that separates ``log p`` from them), and for an
averaged model it scales the averaged model. T > 1 softens over-confident
probabilities, T < 1 sharpens under-confident ones (label smoothing makes those).
Either way the order of the classes, hence every prediction, stays the same.
"""

from __future__ import annotations

import keras
import numpy as np

# log(0) is -inf; the smallest normal float32 keeps it finite (about -87) for any p.
TINY = float(np.finfo(np.float32).tiny)
LOG_T_BOUNDS = (np.log(0.05), np.log(20.0))


def scaled_probabilities(probs: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(log(p) / T)`` in NumPy (float64): the exported layer's computation."""
    from scipy.special import softmax

    return softmax(np.log(np.maximum(np.asarray(probs, np.float64), TINY)) / temperature, axis=1)


def fit_temperature(labels: np.ndarray, probs: np.ndarray) -> float:
    """The T in [0.05, 20] that minimises the NLL of ``softmax(log(p) / T)`` on ``labels``.

    The NLL is convex in 1/T, so it has one minimum along log T: a bounded 1-D search
    finds it (to about 1e-5 in log T).
    """
    from scipy.optimize import minimize_scalar
    from scipy.special import logsumexp

    labels = np.asarray(labels).reshape(-1)
    logits = np.log(np.maximum(np.asarray(probs, np.float64), TINY))
    true = logits[np.arange(len(labels)), labels]

    def nll(log_t: float) -> float:
        scale = np.exp(-log_t)
        return float(np.mean(logsumexp(logits * scale, axis=1) - true * scale))

    found = minimize_scalar(nll, bounds=LOG_T_BOUNDS, method="bounded", options={"xatol": 1e-5})
    return float(np.exp(found.x))


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
