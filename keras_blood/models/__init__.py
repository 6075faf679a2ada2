"""Models: one Keras builder per family in a registry, plus the wrappers every family can
take (test-time augmentation, ensembles, temperature scaling).

Importing this package registers every family, and the custom layers a saved
``model.keras`` may name.
"""

from keras_blood.models import cnn, georgetown, resnet, vgg16  # noqa: F401  (registers the builders)
from keras_blood.models.ensemble import average_models
from keras_blood.models.registry import BUILDERS, HEAD, build_model, freeze_before, named_layers, register
from keras_blood.models.temperature import TemperatureScaling, with_temperature
from keras_blood.models.tta import DihedralViews, ViewMean, with_tta

__all__ = [
    "BUILDERS",
    "HEAD",
    "DihedralViews",
    "TemperatureScaling",
    "ViewMean",
    "average_models",
    "build_model",
    "freeze_before",
    "named_layers",
    "register",
    "with_tta",
    "with_temperature",
]
