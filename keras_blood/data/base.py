"""What every data source returns: uint8 images with integer labels, per split."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Split:
    """One split held in memory: ``images`` uint8 ``[N, H, W, 3]``, ``labels`` int ``[N]``."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, indices: np.ndarray) -> "Split":
        return Split(self.images[indices], self.labels[indices])


@dataclass(frozen=True)
class DataBundle:
    name: str
    class_names: list[str]
    splits: dict[str, Split]
    # How a raw image becomes a model input (recorded with the exported model).
    preparation: dict[str, Any] = field(default_factory=dict)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(next(iter(self.splits.values())).images.shape[1:])  # type: ignore[return-value]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def capped(self, max_examples: int | None, seed: int) -> "DataBundle":
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
        return DataBundle(self.name, self.class_names, splits, self.preparation)
