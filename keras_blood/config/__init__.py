"""Experiment configs: one YAML file per experiment, parsed into typed, validated objects.

``schema`` holds the pydantic models (a config file maps 1:1 onto :class:`Config`),
``loading`` reads a file with its ``--set`` overrides, ``sweep`` reads a study's sweep
file, ``presets`` holds the papers' models and figures as data, ``paths`` says what a path
names (a run folder, a version ...), and ``cli`` is what every command's parser shares.
Nothing here imports TensorFlow: a bad config fails in a fraction of a second.
"""

from keras_blood.config.loading import load_config, read_raw, save_config, validate_config
from keras_blood.config.paths import version_config_file
from keras_blood.config.schema import (
    DATA_ROOT_ENV,
    MODEL_CLASSES,
    AugmentConfig,
    CellCropConfig,
    CNNConfig,
    ColorConfig,
    Config,
    DataConfig,
    EvalConfig,
    FNNConfig,
    GeorgetownConfig,
    OutputConfig,
    ResNetConfig,
    TrainConfig,
    VGG16Config,
)

__all__ = [
    "DATA_ROOT_ENV",
    "MODEL_CLASSES",
    "AugmentConfig",
    "CNNConfig",
    "CellCropConfig",
    "ColorConfig",
    "Config",
    "DataConfig",
    "EvalConfig",
    "FNNConfig",
    "GeorgetownConfig",
    "OutputConfig",
    "ResNetConfig",
    "TrainConfig",
    "VGG16Config",
    "load_config",
    "read_raw",
    "save_config",
    "validate_config",
    "version_config_file",
]
