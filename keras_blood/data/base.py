"""What every data source returns: uint8 images with integer labels, per split."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from keras_blood.data.classes import match_classes


@dataclass(frozen=True)
class Split:
    """One split held in memory: ``images`` uint8 ``[N, H, W, 3]``, ``labels`` int ``[N]``,
    for sources read from files the file each image came from, and with data.sources the
    index of the source each came from (into DataBundle.source_names)."""

    images: np.ndarray
    labels: np.ndarray
    files: np.ndarray | None = None
    source: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, indices: np.ndarray) -> Split:
        return Split(
            self.images[indices],
            self.labels[indices],
            None if self.files is None else self.files[indices],
            None if self.source is None else self.source[indices],
        )


@dataclass(frozen=True)
class DataBundle:
    name: str
    class_names: list[str]
    splits: dict[str, Split]
    # How a raw image becomes a model input (recorded with the exported model).
    preparation: dict[str, Any] = field(default_factory=dict)
    # data.sources: the sources' names, in the order Split.source numbers them.
    source_names: list[str] = field(default_factory=list)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(next(iter(self.splits.values())).images.shape[1:])  # type: ignore[return-value]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def capped(self, max_examples: int | None, seed: int) -> DataBundle:
        """At most ``max_examples`` per split, drawn at random (seeded) so classes stay mixed."""
        if max_examples is None:
            return self
        rng = np.random.default_rng(seed)
        splits = {
            name: split.take(np.sort(rng.permutation(len(split))[:max_examples]))
            if len(split) > max_examples
            else split
            for name, split in self.splits.items()
        }
        return replace(self, splits=splits)

    def with_classes(self, names: list[str] | None) -> DataBundle:
        """Only the classes ``names`` (``data.classes``), relabelled 0..k-1 in that order."""
        if names is None:
            return self
        kept = match_classes(self.class_names, names)
        if kept == self.class_names:
            return self
        new_label = np.full(len(self.class_names), -1, np.int32)
        for label, name in enumerate(kept):
            new_label[self.class_names.index(name)] = label
        splits = {}
        for split_name, split in self.splits.items():
            relabelled = new_label[split.labels]
            rows = np.flatnonzero(relabelled >= 0)
            splits[split_name] = replace(split.take(rows), labels=relabelled[rows])
        return replace(self, class_names=kept, splits=splits)


def missing_classes(class_names: list[str], labels: dict[str, np.ndarray]) -> list[tuple[str, str]]:
    """``(split, class)`` for each class that has no example in a split (``labels`` per split)."""
    return [
        (split, name)
        for split, split_labels in labels.items()
        for label, name in enumerate(class_names)
        if not np.any(split_labels == label)
    ]
