"""Kaggle "Blood Cell Images" (Mooney 2018), the Georgetown study's data: 4 white-cell classes,
read through the TFDS builder ``blood_cell_images`` (keras_blood.data.builders.blood_cell_images),
prepared once in ``data.tfds_dir``.

``data.root`` (the builder's manual folder) holds ``TRAIN/`` and ``TEST/`` (and optionally
``TEST_SIMPLE/``), each with one folder of images per class. The builder's config is how
the validation split is drawn: ``data.val_fraction`` of each class's TRAIN source cells,
seeded with the run's seed, over the ``data.classes`` kept; each such config is prepared
once. The prepared copy holds the JPEGs' own bytes; they are decoded and resized here, in
a parallel tf.data map, into the uint8 arrays of a :class:`Split` (the training pipeline
caches those). ``data.max_examples`` is applied before decoding, so a smoke run decodes
only its slice.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from keras_blood.config.schema import DataConfig
from keras_blood.data import register
from keras_blood.data.base import DataBundle, Split, match_classes, missing_classes
from keras_blood.data.builders import blood_cell_images as source
from keras_blood.data.decoded import RESIZE_METHOD, decode_splits
from keras_blood.data.prepared import prepared_builder, read_all, stamp
from keras_blood.errors import DataError

DEFAULT_ROOT = Path("~/blood-cell-images/dataset2-master/images")
# The builder's split -> keras-blood's.
SPLITS = {"train": "train", "validation": "val", "test": "test", "test_simple": "test_simple"}


@register("blood_cell_images")
def load_blood_cell_images(config: DataConfig, seed: int = 0) -> DataBundle:

    given = config.given_root()
    root = given or DEFAULT_ROOT.expanduser()
    has_data = given is not None or (root / "TRAIN").is_dir()
    if has_data:
        folders = source.check_layout(root)  # raises unless root is the data set's folder
        if config.classes:
            match_classes(folders, config.classes)  # a ConfigError naming the unknown ones
        fingerprint = source.source_fingerprint(root)
        accept = lambda meta: meta.get("source_fingerprint") == fingerprint  # noqa: E731
    else:
        accept = lambda meta: True  # noqa: E731  (no data here: any prepared copy)
    builder = prepared_builder(
        "blood_cell_images",
        source.builder_config(config.val_fraction, seed, config.skip_unreadable, tuple(config.classes or ())),
        tfds_dir=config.resolved_tfds_dir(),
        manual_dir=root,
        accept=accept,
        check=lambda: source.check_layout(root),
    )
    # The files: in root, or where the copy was made from if root holds nothing.
    files_root = str(root if has_data else builder.info.metadata.get("source", root))
    splits, class_names = _load(builder.data_dir, stamp(builder.data_dir), config.max_examples, seed,
                                config.height_width, files_root)  # fmt: skip
    height, width = config.height_width
    return DataBundle(
        name="blood_cell_images",
        class_names=class_names,
        splits=splits,
        preparation={"resize": [height, width], "method": RESIZE_METHOD},
    )


@functools.lru_cache(maxsize=2)
def _load(data_dir: str, _stamp: int, max_examples, seed: int, size: tuple[int, int], root: str):
    """``(splits, class names)``, decoded at ``size``; memoised per process, so a sweep
    that trains many models on the same data decodes it once."""
    # Encoded JPEGs stand in for the images while the cap picks the rows.
    encoded = DataBundle("blood_cell_images", *_records(data_dir, _stamp))
    # Checked on the full splits, before data.max_examples: a smoke slice may lack a class.
    if empty := missing_classes(encoded.class_names, {name: split.labels for name, split in encoded.splits.items()}):
        split, name = empty[0]
        raise DataError(f"class {name!r} has no examples in the {split} split: {_why_empty(Path(root), split, name)}")
    encoded = encoded.capped(max_examples, seed)
    located = {name: Split(split.images, split.labels, np.array([str(Path(root) / f) for f in split.files], dtype=str))
               for name, split in encoded.splits.items()}  # fmt: skip
    return decode_splits(located, size), list(encoded.class_names)


@functools.lru_cache(maxsize=1)
def _records(data_dir: str, _stamp: int) -> tuple[list[str], dict[str, Split]]:
    """``(class names, splits)`` of a prepared copy, without decoding: each Split's images
    are the JPEG bytes, its files the paths relative to the folder it was prepared from."""
    import tensorflow_datasets as tfds

    builder, splits = read_all(data_dir, list(SPLITS), decoders={"image": tfds.decode.SkipDecoding()})
    records = {
        SPLITS[name]: Split(rows["image"], rows["label"].astype(np.int32), np.array([f.decode() for f in rows["file"]], dtype=str))
        for name, rows in splits.items()
    }
    return list(builder.info.features["label"].names), records


def _why_empty(root: Path, split: str, name: str) -> str:
    fix = "add images, or leave the class out with data.classes"
    if split == "val":  # validation holds out whole source cells and keeps one for train
        return f"{root / 'TRAIN' / name} holds images of one source cell only; {fix}"
    folder = root / {"train": "TRAIN", "test": "TEST", "test_simple": "TEST_SIMPLE"}[split] / name
    return f"{folder} {'holds no files' if folder.is_dir() else 'does not exist'}; {fix}"
