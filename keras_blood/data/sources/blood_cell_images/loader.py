"""Kaggle "Blood Cell Images" (Mooney 2018), the Georgetown study's data: 4 white-cell classes,
read through the TFDS builder ``blood_cell_images`` (:mod:`.builder`),
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

from pathlib import Path

from keras_blood.config.schema import DataConfig
from keras_blood.data.base import DataBundle, missing_classes
from keras_blood.data.classes import match_classes
from keras_blood.data.decoded import RESIZE_METHOD, encoded_splits, load_decoded
from keras_blood.data.prepared import prepared_builder, stamp
from keras_blood.data.sources.blood_cell_images.builder import (
    FOLDERS,
    BloodCellImages,
    builder_config,
    check_layout,
    source_fingerprint,
)
from keras_blood.data.splits import TFDS_SPLITS
from keras_blood.errors import DataError

DEFAULT_ROOT = Path("~/blood-cell-images/dataset2-master/images")


def load_blood_cell_images(config: DataConfig, seed: int = 0) -> DataBundle:

    given = config.given_root()
    root = given or DEFAULT_ROOT.expanduser()
    has_data = given is not None or (root / "TRAIN").is_dir()
    if has_data:
        folders = check_layout(root)  # raises unless root is the data set's folder
        if config.classes:
            match_classes(folders, config.classes)  # a ConfigError naming the unknown ones
        fingerprint = source_fingerprint(root)
        accept = lambda meta: meta.get("source_fingerprint") == fingerprint  # noqa: E731
    else:
        accept = lambda meta: True  # noqa: E731  (no data here: any prepared copy)
    builder = prepared_builder(
        BloodCellImages,
        builder_config(config.val_fraction, seed, config.skip_unreadable, tuple(config.classes or ())),
        tfds_dir=config.resolved_tfds_dir(),
        manual_dir=root,
        accept=accept,
        check=lambda: check_layout(root),
    )
    # The files: in root, or where the copy was made from if root holds nothing.
    files_root = str(root if has_data else builder.info.metadata.get("source", root))
    class_names, encoded = encoded_splits(builder.data_dir, stamp(builder.data_dir))
    # Checked on the full splits, before data.max_examples: a smoke slice may lack a class.
    if empty := missing_classes(class_names, {name: split.labels for name, split in encoded.items()}):
        split, name = empty[0]
        raise DataError(
            f"class {name!r} has no examples in the {split} split: {_why_empty(Path(files_root), split, name)}"
        )
    splits, class_names = load_decoded(
        builder.data_dir, stamp(builder.data_dir), config.max_examples, seed, config.height_width, files_root
    )
    height, width = config.height_width
    return DataBundle(
        name="blood_cell_images",
        class_names=class_names,
        splits=splits,
        preparation={"resize": [height, width], "method": RESIZE_METHOD},
    )


def _why_empty(root: Path, split: str, name: str) -> str:
    fix = "add images, or leave the class out with data.classes"
    if split == "val":  # validation holds out whole source cells and keeps one for train
        return f"{root / 'TRAIN' / name} holds images of one source cell only; {fix}"
    folder = root / FOLDERS[TFDS_SPLITS[split]] / name
    return f"{folder} {'holds no files' if folder.is_dir() else 'does not exist'}; {fix}"
