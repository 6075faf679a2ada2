"""Sanity checks of Grad-CAM maps, for the tests and benchmarks/gradcam_share.py: how much
of a map lies on the cell, and whether the maps survive re-initialising the network's top
(the model-parameter randomisation test of Adebayo et al. 2018)."""

from __future__ import annotations

import keras
import numpy as np
from scipy.stats import rankdata

from keras_blood.evaluation.gradcam import feature_layer


def mask_share(cams: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Per map, the share of its mass inside ``masks`` (bool ``[N, h, w]``); NaN for an
    all-zero map. A uniform map's share is the mask's area fraction."""
    total = cams.reshape(len(cams), -1).sum(axis=1)
    inside = (cams * masks).reshape(len(cams), -1).sum(axis=1)
    return np.where(total > 0, inside / np.where(total > 0, total, 1.0), np.nan)


def rank_correlation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman's rank correlation of each pair of maps; 0 where either map is constant
    (an all-zero map ranks nothing)."""
    out = np.zeros(len(a))
    for i, (x, y) in enumerate(zip(a.reshape(len(a), -1), b.reshape(len(b), -1))):
        if np.ptp(x) > 0 and np.ptp(y) > 0:
            out[i] = np.corrcoef(rankdata(x), rankdata(y))[0, 1]
    return out


def randomized_top(network, seed: int = 0):
    """A copy of ``network`` whose layers from the feature layer's on (the top of the
    network: the last convolution and the dense head) are re-initialised, the rest kept:
    the model-parameter randomisation test of Adebayo et al. (2018). Maps that survive it
    do not depend on what the network learnt."""
    layer, owner = feature_layer(network)
    top = network.layers.index(owner if owner is not network else layer)
    keras.utils.set_random_seed(seed)
    fresh = keras.models.clone_model(network)  # every layer freshly initialised
    for index, (trained, new) in enumerate(zip(network.layers, fresh.layers)):
        if index < top:
            new.set_weights(trained.get_weights())
    return fresh
