"""Kaggle "Blood Cell Images" (Mooney 2018) as a TFDS builder: 4 white-cell classes, 320x240 JPEGs.

    import keras_blood.data.builders, tensorflow_datasets as tfds
    val = tfds.load("blood_cell_images", split="validation", data_dir=D,
                    download_and_prepare_kwargs={"download_config": tfds.download.DownloadConfig(manual_dir=M)})

Manual download only (Kaggle needs an account): the manual folder is the data set's
``dataset2-master/images``, holding ``TRAIN/`` and ``TEST/`` (and optionally
``TEST_SIMPLE/``), each with one folder of images per class. Class names are the folder
names; each example keeps its JPEG's bytes as they are, its class, its source cell and
its file (relative to the manual folder).

The images are augmentations of a few hundred source cells; a file's name
``_<source>_<rand>.jpeg`` numbers its source within its class folder. The ``validation``
split is carved from TRAIN by source: per class, a seeded ``val_fraction`` of the sources
(at least one where a class has two or more) with all their images, so augmentations of
one cell never sit on both sides; ``train`` is the rest of TRAIN. ``test`` is TEST (71
other source cells), ``test_simple`` TEST_SIMPLE (one image per TEST source). The seed
and fraction make the config: ``seed42-val0.2`` (the default) and so on.

Hidden files (.DS_Store and the like) are left out; every other file is decoded once while
preparing, and one that is not a readable image stops the prepare with an error naming
it, or, with ``skip_unreadable``, is left out with a counted warning.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from keras_blood.data.builder_info import LocalDatasetInfo, manual_folder, unreadable, why_unreadable
from keras_blood.data.classes import match_classes
from keras_blood.data.fingerprint import files_fingerprint
from keras_blood.errors import DataError

SOURCE_URL = "https://www.kaggle.com/datasets/paultimothymooney/blood-cells"
# The TFDS split -> its folder; validation is carved from TRAIN.
FOLDERS = {"train": "TRAIN", "validation": "TRAIN", "test": "TEST", "test_simple": "TEST_SIMPLE"}
# "_<source>_<rand>.jpeg": the source index is the number after the first underscore.
SOURCE_PATTERN = re.compile(r"^[^_]*_(\d+)_")

CITATION = r"""@misc{mooney2018bloodcells,
  author       = {Mooney, Paul},
  title        = {Blood Cell Images},
  year         = {2018},
  howpublished = {\url{https://www.kaggle.com/datasets/paultimothymooney/blood-cells}}
}"""


@dataclass(frozen=True)
class SplitFiles:
    """The image files of one split folder, in a fixed order (class, then file name)."""

    paths: np.ndarray  # str, full paths
    labels: np.ndarray  # int32, index into the class names
    sources: np.ndarray  # str, "<class>/<source index>"; the stem where a name has none

    def take(self, indices: np.ndarray) -> SplitFiles:
        return SplitFiles(self.paths[indices], self.labels[indices], self.sources[indices])

    def __len__(self) -> int:
        return len(self.paths)


def class_folders(split_dir: Path) -> list[str]:
    return sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def _files(folder: Path) -> list[os.DirEntry]:
    """The files of a class folder by name; hidden ones (.DS_Store) are not images."""
    if not folder.is_dir():
        return []
    entries = (e for e in os.scandir(folder) if not e.name.startswith(".") and e.is_file())
    return sorted(entries, key=lambda e: e.name)


def scan(split_dir: Path, class_names: list[str]) -> SplitFiles:
    """List ``split_dir/<class>/*``; everything but hidden files, so a stray file is
    reported when it fails to decode, not lost."""
    paths, labels, sources = [], [], []
    for label, name in enumerate(class_names):
        for entry in _files(split_dir / name):
            match = SOURCE_PATTERN.match(entry.name)
            paths.append(entry.path)
            labels.append(label)
            sources.append(f"{name}/{match.group(1) if match else Path(entry.name).stem}")
    return SplitFiles(np.array(paths, dtype=str), np.array(labels, np.int32), np.array(sources, dtype=str))


def split_by_source(folder: SplitFiles, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(train, val)``: per class, a seeded ``fraction`` of the source cells (at
    least one where a class has two or more) goes to validation with all its images."""
    rng = np.random.default_rng(seed)
    val_sources: set[str] = set()
    for label in np.unique(folder.labels):
        sources = np.unique(folder.sources[folder.labels == label])
        count = min(max(1, round(fraction * len(sources))), len(sources) - 1)
        val_sources.update(rng.permutation(sources)[:count])
    is_val = np.isin(folder.sources, sorted(val_sources))
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


def check_layout(root: Path | None) -> list[str]:
    """The class names (TRAIN's class folders); a DataError where ``root`` is not the
    data set's images folder."""
    for folder in ("TRAIN", "TEST"):
        if root is None or not (root / folder).is_dir():
            raise DataError(
                f"{root or 'the manual folder'} has no {folder}/ folder. data.root (the manual "
                "folder) must hold TRAIN/ and TEST/ with one folder of images per class, as the "
                f"Kaggle data set's dataset2-master/images does (download it from {SOURCE_URL})"
            )
    class_names = class_folders(root / "TRAIN")
    if not class_names:
        raise DataError(f"{root / 'TRAIN'} holds no class folders")
    for folder in ("TEST", "TEST_SIMPLE"):
        unknown = sorted(set(class_folders(root / folder)) - set(class_names)) if (root / folder).is_dir() else []
        if unknown:
            raise DataError(f"{root / folder} has class folders that TRAIN lacks: {unknown}")
    return class_names


def source_fingerprint(root: Path) -> str:
    """What identifies the folders a prepared copy was made from, without reading an
    image: every file's path, size and modification time."""
    return files_fingerprint(
        (f"{folder}/{name}/{entry.name}", entry.path)
        for folder in sorted(set(FOLDERS.values()))
        if (root / folder).is_dir()
        for name in class_folders(root / folder)
        for entry in _files(root / folder / name)
    )


@dataclasses.dataclass
class BloodCellImagesConfig(tfds.core.BuilderConfig):
    val_fraction: float = 0.2
    seed: int = 42
    skip_unreadable: bool = False
    # Only these classes (matched case-insensitively), labelled in this order; () for all.
    # The seeded draw goes class by class, so a subset has its own validation split.
    classes: tuple[str, ...] = ()


def make_config(
    val_fraction: float = 0.2, seed: int = 42, skip_unreadable: bool = False, classes: tuple[str, ...] = ()
) -> BloodCellImagesConfig:
    """The config for a validation split; its name says how it was drawn."""
    name = f"seed{seed}-val{val_fraction:g}"
    description = f"validation: {val_fraction:g} of each class's TRAIN source cells, seed {seed}"
    if skip_unreadable:
        name, description = f"{name}-skip_unreadable", f"{description}; unreadable files left out"
    if classes:
        # Folder names may hold characters a config name may not.
        digest = hashlib.sha1("\n".join(c.casefold() for c in classes).encode()).hexdigest()[:10]
        name, description = f"{name}-classes{digest}", f"{description}; classes {list(classes)}"
    return BloodCellImagesConfig(
        name=name,
        val_fraction=val_fraction,
        seed=seed,
        skip_unreadable=skip_unreadable,
        classes=tuple(classes),
        description=description,
    )


class BloodCellImages(tfds.core.GeneratorBasedBuilder):
    """Kaggle "Blood Cell Images": train / source-held-out validation / test / test_simple."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "dataset2-master/images, validation carved by source cell."}
    BUILDER_CONFIGS = [make_config()]
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
    Download the data set from {SOURCE_URL} (a Kaggle account is needed) and use its
    dataset2-master/images folder, the one holding TRAIN/ and TEST/ (and TEST_SIMPLE/), as
    the manual folder (keras-blood: data.root).
    """

    def _info(self) -> tfds.core.DatasetInfo:
        return LocalDatasetInfo(
            builder=self,
            description=(
                "Blood Cell Images (Mooney 2018): 12,515 augmented 320x240 JPEGs of four "
                "white-cell classes, made from a few hundred source cells; the validation "
                "split holds out whole source cells of TRAIN."
            ),
            features=tfds.features.FeaturesDict(
                {
                    # The file's own bytes, decoded on reading: nothing is re-encoded.
                    "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
                    "label": tfds.features.ClassLabel(),  # names: the class folders, when prepared
                    "source": tfds.features.Text(doc="source cell: '<class folder>/<index>'"),
                    "file": tfds.features.Text(doc="path relative to the manual folder"),
                }
            ),
            supervised_keys=("image", "label"),
            disable_shuffling=True,  # class, then file name, as the folders list them
            homepage=SOURCE_URL,
            citation=CITATION,
            license="MIT",
            metadata=tfds.core.MetadataDict(),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        config = self.builder_config
        root = manual_folder(dl_manager)
        class_names = check_layout(root)
        if config.classes:
            class_names = match_classes(class_names, list(config.classes))
        self.info.features["label"].names = class_names

        train = scan(root / "TRAIN", class_names)
        train_idx, val_idx = split_by_source(train, config.val_fraction, config.seed)
        splits = {
            "train": train.take(train_idx),
            "validation": train.take(val_idx),
            "test": scan(root / "TEST", class_names),
        }
        if (root / "TEST_SIMPLE").is_dir():
            splits["test_simple"] = scan(root / "TEST_SIMPLE", class_names)
        splits = self._readable(splits)
        self.info.metadata.update(source=str(root), source_fingerprint=source_fingerprint(root))
        # TFDS cannot write an empty split: one without images is left out.
        return {name: self._generate_examples(folder, root) for name, folder in splits.items() if len(folder)}

    def _readable(self, splits: dict[str, SplitFiles]) -> dict[str, SplitFiles]:
        """``splits`` without the files that do not decode (DataError unless skip_unreadable)."""
        paths = [p for folder in splits.values() for p in folder.paths.tolist()]
        bad = unreadable(paths)
        if not bad:
            return splits
        if not self.builder_config.skip_unreadable:
            raise DataError(
                f"{paths[bad[0]]}: not a readable image ({why_unreadable(paths[bad[0]])}); "
                f"{len(bad)} such file(s) in all. Remove them or set data.skip_unreadable: true"
            )
        examples = ", ".join(Path(paths[i]).name for i in bad[:3])
        print(
            f"warning: skipped {len(bad)} of {len(paths)} files that are not readable images (e.g. {examples})",
            file=sys.stderr,
            flush=True,
        )
        bad_paths = {paths[i] for i in bad}
        return {
            name: folder.take(np.flatnonzero([p not in bad_paths for p in folder.paths]))
            for name, folder in splits.items()
        }

    def _generate_examples(self, folder: SplitFiles, root: Path):
        for path, label, source in zip(folder.paths.tolist(), folder.labels.tolist(), folder.sources.tolist()):
            relative = Path(path).relative_to(root).as_posix()
            yield relative, {"image": Path(path).read_bytes(), "label": label, "source": source, "file": relative}


def builder_config(
    val_fraction: float = 0.2, seed: int = 42, skip_unreadable: bool = False, classes: tuple[str, ...] = ()
) -> BloodCellImagesConfig | str:
    """What ``tfds.builder(..., config=)`` takes for this split: the name of a predefined
    config (TFDS refuses a new object named like one), else the new config."""
    config = make_config(val_fraction, seed, skip_unreadable, classes)
    return config.name if config.name in BloodCellImages.builder_configs else config
