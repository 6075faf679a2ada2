"""Kaggle "Blood Cell Images" (Mooney 2018), the Georgetown study's data: 4 white-cell classes.

``data.root`` holds ``TRAIN/`` and ``TEST/`` (and optionally ``TEST_SIMPLE/``), each with
one folder of images per class; the class names are the folder names. The 320x240 JPEGs
are decoded and resized in a parallel tf.data map, once, into the uint8 arrays of a
:class:`Split` (the training pipeline caches those).

The images are augmentations of a few hundred source cells; a file's name
``_<source>_<rand>.jpeg`` numbers its source within its class folder. Validation is
carved from TRAIN by source (seeded, per class, ``data.val_fraction`` of the sources), so
augmentations of one cell never sit on both sides. TEST (71 other source cells) is the
test split; TEST_SIMPLE, one image per TEST source, is the extra split ``test_simple``.
"""

from __future__ import annotations

import functools
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from keras_blood.config import DataConfig
from keras_blood.data import register
from keras_blood.data.base import DataBundle, Split, match_classes, missing_classes
from keras_blood.errors import DataError

DEFAULT_ROOT = Path("~/blood-cell-images/dataset2-master/images")
SOURCE_URL = "https://www.kaggle.com/datasets/paultimothymooney/blood-cells"
FOLDERS = {"train": "TRAIN", "test": "TEST", "test_simple": "TEST_SIMPLE"}
RESIZE_METHOD = "area"  # averages whole pixel blocks: the cleanest large downscale
# "_<source>_<rand>.jpeg": the source index is the number after the first underscore.
SOURCE_PATTERN = re.compile(r"^[^_]*_(\d+)_")


@dataclass(frozen=True)
class ImageFolder:
    """The image files of one split folder, in a fixed order (class, then file name)."""

    paths: np.ndarray  # str, full paths
    labels: np.ndarray  # int32, index into the class names
    sources: np.ndarray  # str, "<class>/<source index>"; the stem where a name has none

    def take(self, indices: np.ndarray) -> "ImageFolder":
        return ImageFolder(self.paths[indices], self.labels[indices], self.sources[indices])

    def __len__(self) -> int:
        return len(self.paths)


def class_folders(split_dir: Path) -> list[str]:
    return sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def scan(split_dir: Path, class_names: list[str]) -> ImageFolder:
    """List ``split_dir/<class>/*``. Hidden files (.DS_Store and the like) are not images
    and are left out; everything else is decoded, so a stray file is reported, not lost."""
    paths, labels, sources = [], [], []
    for label, name in enumerate(class_names):
        folder = split_dir / name
        if not folder.is_dir():
            continue
        for entry in sorted(os.scandir(folder), key=lambda e: e.name):
            if entry.name.startswith(".") or not entry.is_file():
                continue
            match = SOURCE_PATTERN.match(entry.name)
            paths.append(entry.path)
            labels.append(label)
            sources.append(f"{name}/{match.group(1) if match else Path(entry.name).stem}")
    return ImageFolder(np.array(paths, dtype=str), np.array(labels, np.int32), np.array(sources, dtype=str))


def split_by_source(folder: ImageFolder, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
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


def _cap(folder: ImageFolder, max_examples: int | None, rng: np.random.Generator) -> ImageFolder:
    # As DataBundle.capped does, but before decoding, so a smoke run decodes only its slice.
    if max_examples is None or len(folder) <= max_examples:
        return folder
    return folder.take(np.sort(rng.permutation(len(folder))[:max_examples]))


def _fingerprint(paths: tuple[str, ...]) -> tuple:
    stats = [os.stat(p) for p in paths]
    return tuple((s.st_size, s.st_mtime_ns) for s in stats)


def decode_images(paths: list[str], size: tuple[int, int], skip_unreadable: bool) -> tuple[np.ndarray, np.ndarray]:
    """Decode and resize ``paths`` in a parallel tf.data map: ``(uint8 [N, H, W, 3], kept)``.

    ``kept`` are the indices of the readable files. Results are memoised per process
    (keyed by the files' sizes and modification times), so a sweep that trains many
    models on the same data decodes it once.
    """
    key = tuple(paths)
    return _decode_cached(key, _fingerprint(key), tuple(size), skip_unreadable)


@functools.lru_cache(maxsize=2)
def _decode_cached(paths: tuple[str, ...], _stats: tuple, size: tuple[int, int], skip_unreadable: bool):
    import tensorflow as tf

    def load(path, index):
        image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        image = tf.image.resize(image, size, method=RESIZE_METHOD)
        return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8), index

    ds = tf.data.Dataset.from_tensor_slices((list(paths), tf.range(len(paths), dtype=tf.int64)))
    # A file that fails to read or decode is dropped here and reported below by name.
    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).ignore_errors()
    images, kept = [np.zeros((0, *size, 3), np.uint8)], [np.zeros(0, np.int64)]
    for batch_images, batch_index in ds.batch(512).as_numpy_iterator():
        images.append(batch_images)
        kept.append(batch_index)
    images_array, kept_array = np.concatenate(images), np.concatenate(kept)

    bad = sorted(set(range(len(paths))) - set(kept_array.tolist()))
    if bad and not skip_unreadable:
        raise DataError(
            f"{paths[bad[0]]}: not a readable image ({_why_unreadable(paths[bad[0]])}); "
            f"{len(bad)} such file(s) in all. Remove them or set data.skip_unreadable: true"
        )
    if bad:
        examples = ", ".join(Path(paths[i]).name for i in bad[:3])
        print(
            f"warning: skipped {len(bad)} of {len(paths)} files that are not readable images "
            f"(e.g. {examples})",
            file=sys.stderr,
            flush=True,
        )
    return images_array, kept_array


def _why_unreadable(path: str) -> str:
    import tensorflow as tf

    try:
        tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
    except Exception as exc:  # tf raises several types; the message is what matters
        return str(getattr(exc, "message", exc)).strip().splitlines()[0]
    return "decoding failed"


def _why_empty(root: Path, split: str, name: str) -> str:
    fix = "add images, or leave the class out with data.classes"
    if split == "val":  # split_by_source holds out whole source cells and keeps one for train
        return f"{root / FOLDERS['train'] / name} holds images of one source cell only; {fix}"
    folder = root / FOLDERS[split] / name
    return f"{folder} {'holds no files' if folder.is_dir() else 'does not exist'}; {fix}"


@register("blood_cell_images")
def load_blood_cell_images(config: DataConfig, seed: int = 0) -> DataBundle:
    root = config.resolved_root(DEFAULT_ROOT)
    for folder in ("train", "test"):
        if not (root / FOLDERS[folder]).is_dir():
            raise DataError(
                f"{root} has no {FOLDERS[folder]}/ folder. data.root must hold TRAIN/ and TEST/ "
                "with one folder of images per class, as the Kaggle data set's "
                f"dataset2-master/images does (download it from {SOURCE_URL})"
            )
    all_names = class_folders(root / FOLDERS["train"])
    if not all_names:
        raise DataError(f"{root / FOLDERS['train']} holds no class folders")
    for folder in ("test", "test_simple"):
        split_dir = root / FOLDERS[folder]
        unknown = sorted(set(class_folders(split_dir)) - set(all_names)) if split_dir.is_dir() else []
        if unknown:
            raise DataError(f"{split_dir} has class folders that TRAIN lacks: {unknown}")
    # data.classes is applied here, before decoding, so only the kept images are read.
    class_names = match_classes(all_names, config.classes) if config.classes else all_names

    train = scan(root / FOLDERS["train"], class_names)
    train_idx, val_idx = split_by_source(train, config.val_fraction, seed)
    folders = {"train": train.take(train_idx), "val": train.take(val_idx)}
    for name in ("test", "test_simple"):
        if (root / FOLDERS[name]).is_dir():
            folders[name] = scan(root / FOLDERS[name], class_names)
    # Checked on the full folders, before data.max_examples: a smoke slice may lack a class.
    if empty := missing_classes(class_names, {name: folder.labels for name, folder in folders.items()}):
        split, name = empty[0]
        raise DataError(f"class {name!r} has no examples in the {split} split: {_why_empty(root, split, name)}")

    rng = np.random.default_rng(seed)
    folders = {name: _cap(folder, config.max_examples, rng) for name, folder in folders.items()}
    # One decode for all splits: one tf.data pass, and one entry in the memo.
    order = list(folders)
    paths = [p for name in order for p in folders[name].paths.tolist()]
    images, kept = decode_images(paths, config.height_width, config.skip_unreadable)
    owner = np.repeat(np.arange(len(order)), [len(folders[name]) for name in order])
    offsets = np.cumsum([0] + [len(folders[name]) for name in order])
    splits = {}
    for i, name in enumerate(order):
        rows = owner[kept] == i
        local = kept[rows] - offsets[i]
        folder = folders[name].take(local)
        splits[name] = Split(images[rows], folder.labels, files=folder.paths)
    height, width = config.height_width
    return DataBundle(
        name="blood_cell_images",
        class_names=list(class_names),
        splits=splits,
        preparation={"resize": [height, width], "method": RESIZE_METHOD},
    )
