"""The data sources by name (``data.name``), as :mod:`keras_blood.models.registry` is for
models: one line a source. A source is a folder under ``data/sources/`` holding its loader
(a DataConfig and a seed -> a :class:`DataBundle`), its TFDS builder and, where it lists
files, its listing; ``sources`` is several of them in one model (:mod:`.mixture`).
"""

from __future__ import annotations

from collections.abc import Callable

from keras_blood.config.schema import DataConfig
from keras_blood.data.base import DataBundle
from keras_blood.data.mixture import load_sources
from keras_blood.data.sources.blood_cell_images.loader import load_blood_cell_images
from keras_blood.data.sources.bloodmnist.loader import load_bloodmnist
from keras_blood.data.sources.image_folder.loader import load_image_folder
from keras_blood.errors import ConfigError

DataLoader = Callable[[DataConfig, int], DataBundle]

DATA_SOURCES: dict[str, DataLoader] = {
    "bloodmnist": load_bloodmnist,
    "blood_cell_images": load_blood_cell_images,
    "image_folder": load_image_folder,
    "sources": lambda config, seed: load_sources(config, seed, load_data),
}


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
