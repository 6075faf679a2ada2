"""Another lab's images, labelled with an exported version's classes (``evaluate --data``).

No TensorFlow here: a folder that does not fit the model is said in one line before
anything heavy starts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from keras_blood.data.classes import ClassNames
from keras_blood.data.sources.image_folder.listing import Listing, list_images
from keras_blood.errors import DataError, ExportError


def lab_listing(version_dir: Path, root: str | Path, config) -> Listing:
    """The images under ``root``, labelled with the version's classes (no TensorFlow: a bad
    folder is one line before anything starts)."""
    model_classes = recorded_class_names(version_dir)
    found = list_images(Path(root), aliases=config.data.class_aliases, draw=False, min_classes=1)
    names = ClassNames(model_classes, config.data.class_aliases)
    mapped = [names(name) for name in found.class_names]
    if not any(mapped):
        raise DataError(
            f"{root}: none of its classes {found.class_names} is one of the model's {model_classes}; "
            "name the folders as the model's classes, or map them with --set data.class_aliases="
            "'{<model class>: [<your name>]}'"
        )
    keep = np.array([mapped[label] is not None for label in found.labels], bool)
    labels = np.array([model_classes.index(mapped[label]) for label in found.labels[keep]], np.int32)
    left_out = dict(found.left_out)
    for name, kept in zip(found.class_names, mapped):
        if kept is None:
            left_out[f"class {name} (not one of the model's)"] = int(np.sum(found.labels == found.class_names.index(name)))
    return Listing(found.root, found.files[keep], labels, found.groups[keep], found.splits[keep], model_classes, left_out)


def recorded_class_names(version_dir: Path) -> list[str]:
    """The version's class names, read from its files without TensorFlow."""
    extra = version_dir / "assets.extra"
    for file, key in (("signature.json", "class_names"), ("class_names.json", None)):
        try:
            recorded = json.loads((extra / file).read_text())
            return list(recorded[key] if key else recorded)
        except (OSError, ValueError, KeyError, TypeError):
            continue
    raise ExportError(f"{version_dir}: no class names recorded (assets.extra/signature.json); is it an exported version?")


def listing_notes(listing: Listing) -> dict[str, Any]:
    """What the report says besides the figures: what was left out, which classes had no images."""
    present = set(listing.labels.tolist())
    missing = [name for label, name in enumerate(listing.class_names) if label not in present]
    return {"left_out": dict(listing.left_out), "classes_without_images": missing}
