"""A model's recipe: what decides the pixels its weights see and what its outputs mean, compared
where a run fine-tunes a model of the very same recipe (``model.weights_recipe: same``,
:func:`keras_blood.training.transfer.check_same_recipe`). No TensorFlow here."""

from __future__ import annotations

from typing import Any

from keras_blood.config.schema import Config

# The model's settings that are no part of what its weights mean.
NOT_RECIPE = ("weights", "fine_tune_from", "weights_recipe")


def recipe(config: Config, class_names: list[str] | None) -> dict[str, Any]:
    """What decides the pixels a model's weights see and what its outputs mean: its classes,
    the preparation the serving graph repeats, and the model's own settings."""
    data = config.data
    steps = {
        "data.classes": [name.strip().casefold() for name in class_names] if class_names else None,
        "data.image_size": list(data.height_width),
        "data.cell_crop": data.cell_crop.model_dump(mode="json") if data.cell_crop else None,
        "data.stain_normalize": data.stain_normalize,
        "data.color_extraction": data.color_extraction,
    }
    if data.color_extraction:
        steps["data.color"] = data.color.model_dump(mode="json")
    model = config.model.model_dump(mode="json")
    return {**steps, **{f"model.{key}": value for key, value in model.items() if key not in NOT_RECIPE}}
