"""The papers' models and figures as data: what a preset name fills in, and what each paper
reported, for the studies to set beside keras-blood's own figures."""

from __future__ import annotations

from typing import Any

# The Georgetown study: each model is the basic 3x (Conv2D + MaxPooling2D) network with these
# settings (keras_blood.config.schema.GeorgetownConfig fills them in from the name).
GEORGETOWN_PRESETS: dict[str, dict[str, Any]] = {
    "basic": {},
    "dropout01": {"dense_dropout": 0.1},
    "dropout03": {"dense_dropout": 0.3},
    "dropout01x3": {"conv_dropout": 0.1},  # one Dropout(0.1) after each of the 3 blocks
    "lasso": {"l1": 1e-4},
    "ridge": {"l2": 1e-3},
    "ridge_dropout01": {"l2": 1e-3, "dense_dropout": 0.1},
}

# The Georgetown study's inputs, as its Table 1 titles them.
INPUT_TITLES = {"original": "Original", "color_extraction": "Colour extraction"}

# The Georgetown paper's Table 1: model -> (row name, {input: (val_loss, val_acc)}).
PAPER_TABLE: dict[str, tuple[str, dict[str, tuple[float, float]]]] = {
    "basic": ("Basic", {"original": (2.187, 0.791), "color_extraction": (1.578, 0.742)}),
    "dropout01": ("Dropout(0.1)", {"original": (1.639, 0.836), "color_extraction": (1.028, 0.778)}),
    "dropout03": ("Dropout(0.3)", {"original": (0.818, 0.842), "color_extraction": (0.696, 0.813)}),
    "dropout01x3": ("3 Dropout(0.1)", {"original": (1.190, 0.794), "color_extraction": (0.797, 0.791)}),
    "lasso": ("Lasso", {"original": (0.978, 0.776), "color_extraction": (0.806, 0.786)}),
    "ridge": ("Ridge", {"original": (1.190, 0.794), "color_extraction": (1.489, 0.723)}),
    "ridge_dropout01": ("Ridge+Dropout(.1)", {"original": (0.871, 0.829), "color_extraction": (1.254, 0.759)}),
    "vgg16": ("Vgg16", {"original": (1.922, 0.383), "color_extraction": (2.703, 0.509)}),
}
