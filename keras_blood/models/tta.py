"""Test-time augmentation: a model averaged over the dihedral views of each image."""

from __future__ import annotations

import keras
from keras import layers

from keras_blood.errors import ConfigError


@keras.saving.register_keras_serializable(package="keras_blood")
class DihedralViews(layers.Layer):
    """Stack the views of each image along the batch: ``[B, ...] -> [V * B, ...]``.

    ``flip``: identity and left-right flip. ``d4``: the 8 symmetries of a square
    (4 rotations, each also flipped). Cells have no orientation, so every view is a
    fair look at the same cell.
    """

    def __init__(self, mode: str = "d4", **kwargs):
        super().__init__(**kwargs)
        self.mode = mode

    def views(self, x):
        if self.mode == "flip":
            return [x, keras.ops.flip(x, axis=2)]
        rotations = [x] + [keras.ops.rot90(x, k=k, axes=(1, 2)) for k in (1, 2, 3)]
        return rotations + [keras.ops.flip(r, axis=2) for r in rotations]

    def call(self, x):
        return keras.ops.concatenate(self.views(x), axis=0)

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


@keras.saving.register_keras_serializable(package="keras_blood")
class ViewMean(layers.Layer):
    """Average ``[V * B, K]`` predictions back to ``[B, K]``."""

    def __init__(self, num_views: int, **kwargs):
        super().__init__(**kwargs)
        self.num_views = num_views

    def call(self, x):
        return keras.ops.mean(keras.ops.reshape(x, (self.num_views, -1, x.shape[-1])), axis=0)

    def get_config(self):
        return {**super().get_config(), "num_views": self.num_views}


def with_tta(model: keras.Model, mode: str) -> keras.Model:
    """``model`` averaged over test-time views (``none`` returns it unchanged)."""
    if mode == "none":
        return model
    height, width = model.input_shape[1:3]
    if mode == "d4" and height != width:
        raise ConfigError(f"eval.tta = 'd4' needs square inputs, got {height}x{width}; use 'flip'")
    views = DihedralViews(mode)
    inputs = keras.Input(shape=model.input_shape[1:], name="pixels")
    probabilities = ViewMean(2 if mode == "flip" else 8, name="probabilities")(model(views(inputs)))
    return keras.Model(inputs, probabilities, name=f"{model.name}_tta_{mode}")
