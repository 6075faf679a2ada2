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

import numpy as np

from keras_blood.models.temperature import TINY

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
