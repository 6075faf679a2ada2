"""The data layer: named sources (:mod:`.registry`, one folder each under ``sources/``)
that turn a DataConfig into labelled uint8 splits, several sources in one model
(:mod:`.mixture`), and the tf.data pipeline (:mod:`.pipeline`, :mod:`.augment`)."""

from keras_blood.data.base import DataBundle, Split
from keras_blood.data.registry import DATA_SOURCES, load_data

__all__ = ["DATA_SOURCES", "DataBundle", "Split", "load_data"]
