"""Data sources: a registry of named loaders that turn a DataConfig into labelled splits."""

from __future__ import annotations

from collections.abc import Callable

from keras_blood.config.schema import DataConfig
from keras_blood.data.base import DataBundle, Split
from keras_blood.errors import ConfigError

DataLoader = Callable[[DataConfig, int], DataBundle]
DATA_SOURCES: dict[str, DataLoader] = {}


def register(name: str) -> Callable[[DataLoader], DataLoader]:
    def decorator(fn: DataLoader) -> DataLoader:
        DATA_SOURCES[name] = fn
        return fn

    return decorator


def load_data(config: DataConfig, seed: int = 0) -> DataBundle:
    """Load the data source that ``config.name`` names (raises DataError when unusable).

    ``data.classes`` and ``data.max_examples`` are applied here for every source, in that
    order; a source may apply them itself first (blood_cell_images does, to decode only
    the files it keeps), which leaves nothing to do here.
    """
    try:
        loader = DATA_SOURCES[config.name]
    except KeyError:
        raise ConfigError(
            f"data.name = {config.name!r}: unknown data source; allowed: {sorted(DATA_SOURCES)}"
        ) from None
    return loader(config, seed).with_classes(config.classes).capped(config.max_examples, seed)


# Importing the modules registers their sources.
from keras_blood.data import blood_cell_images, bloodmnist, image_folder, sources  # noqa: E402,F401

__all__ = ["DATA_SOURCES", "DataBundle", "Split", "load_data", "register"]
