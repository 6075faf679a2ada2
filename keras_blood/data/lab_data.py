"""Another lab's images, labelled with an exported version's classes (``evaluate --data``).

No TensorFlow here: a folder that does not fit the model is said in one line before
anything heavy starts. A folder of split folders (TRAIN/, TEST/) is evaluated as one set;
the command says which it pooled (:func:`pooled_split_folders`).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from keras_blood.config.paths import EXTRA
from keras_blood.data.classes import ClassNames
from keras_blood.data.sources.image_folder.listing import (
    SPLIT_NAMES,
    Listing,
    list_images,
)
from keras_blood.errors import DataError, ExportError


def lab_listing(version_dir: Path, root: str | Path, config) -> Listing:
    """The images under ``root``, labelled with the version's classes (no TensorFlow: a bad
    folder is one line before anything starts)."""
    model_classes = recorded_class_names(version_dir)
    names = ClassNames(model_classes, config.data.class_aliases)  # a bad alias said before the folder is read
    found = list_images(Path(root), aliases=config.data.class_aliases, draw=False, min_classes=1)
    mapped = [names(name) for name in found.class_names]
    if not any(mapped):
        raise DataError(
            f"{root}: none of its classes {found.class_names} is one of the model's {model_classes}; "
            "name the folders as the model's classes, or map them with --set data.class_aliases="
            "'{<model class>: [<your name>]}'"
        )
    keep = np.array([mapped[label] is not None for label in found.labels], bool)
    position = {name: i for i, name in enumerate(names.classes)}  # as matched (stripped)
    labels = np.array([position[mapped[label]] for label in found.labels[keep]], np.int32)
    left_out = dict(found.left_out)
    for name, kept in zip(found.class_names, mapped):
        if kept is None:
            left_out[f"class {name} (not one of the model's)"] = int(
                np.sum(found.labels == found.class_names.index(name))
            )
    return Listing(
        found.root, found.files[keep], labels, found.groups[keep], found.splits[keep], model_classes, left_out
    )


def recorded_class_names(version_dir: Path) -> list[str]:
    """The version's class names, read from its files without TensorFlow."""
    extra = version_dir / EXTRA
    for file, key in (("signature.json", "class_names"), ("class_names.json", None)):
        try:
            recorded = json.loads((extra / file).read_text())
            return list(recorded[key] if key else recorded)
        except (OSError, ValueError, KeyError, TypeError):
            continue
    raise ExportError(
        f"{version_dir}: no class names recorded (assets.extra/signature.json); is it a published version?"
    )


def pooled_split_folders(root: str | Path, listing: Listing) -> dict[str, int]:
    """``{split folder: images}`` where ``root`` is a folder of split folders (Kaggle's
    TRAIN/ and TEST/): ``evaluate --data`` scores them all as one set, and says so. Empty
    for a folder of class folders or a list."""
    root = Path(root).expanduser()
    if not root.is_dir():
        return {}
    folders = {p.name for p in root.iterdir() if p.is_dir() and p.name.casefold() in SPLIT_NAMES}
    counts = Counter(file.split("/", 1)[0] for file in listing.files.tolist())
    return {name: counts[name] for name in sorted(folders) if counts[name]}


def pooled_line(root: str | Path, pooled: dict[str, int]) -> str:
    """One line: which split folders were pooled, and how to evaluate one of them."""
    parts = [f"{name}/ ({count} images)" for name, count in pooled.items()]
    listed = ", ".join(parts[:-1]) + f" and {parts[-1]}" if len(parts) > 1 else parts[0]
    one = next((name for name in pooled if SPLIT_NAMES[name.casefold()] == "test"), next(iter(pooled)))
    return (
        f"{root} has split folders: pooled {listed} into one set of {sum(pooled.values())}; "
        f"to evaluate one, pass --data {Path(root) / one}"
    )


def listing_notes(listing: Listing, pooled: dict[str, int] | None = None) -> dict[str, Any]:
    """What the report says besides the figures: what was left out, which classes had no
    images, and the split folders pooled (:func:`pooled_split_folders`) where there were."""
    present = set(listing.labels.tolist())
    missing = [name for label, name in enumerate(listing.class_names) if label not in present]
    notes = {"left_out": dict(listing.left_out), "classes_without_images": missing}
    if pooled:
        notes["pooled_split_folders"] = dict(pooled)
    return notes
