"""Several sources in one model: ``data.sources``, a short name for each source and its
settings (any of bloodmnist, blood_cell_images, image_folder), trained as one data set.

Each source is loaded as it would be alone, its classes mapped by name and
``data.class_aliases`` onto ``data.classes`` (others left out and counted), and its images
put into one frame, ``data.image_size``: the frame the serving graph makes of a raw capture
of that lab, so that what the model learns from a source is what a server gives it for
that lab's files. A source read whole (the Kaggle images, a lab's folder) is resized to
the frame; one whose images are a centre crop of a capture (BloodMNIST: the centre 200/360
of the PBC capture) is scaled to where that crop lies in the capture's frame, and the rest
of the frame takes the image's border colour. The cell crop (``data.cell_crop``) then
finds the cell in every frame alike, in tf.data and in the serving graph.

Each source keeps its own validation and test splits; :class:`Split.source` tells them
apart for the per-source figures. A source's ``weight`` repeats (or thins) its training
images, so that a small source is not drowned; ``train_examples`` keeps a seeded draw of
them (fine-tuning on a few hundred of a lab's images).
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np

from keras_blood.config.schema import DataConfig, SourceConfig
from keras_blood.data.base import DataBundle, Split
from keras_blood.data.classes import ClassNames
from keras_blood.data.decoded import RESIZE_METHOD
from keras_blood.data.sources.image_folder.listing import source_config_of
from keras_blood.data.splits import SPLITS
from keras_blood.errors import DataError


def load_sources(config: DataConfig, seed: int, load_data: Callable[[DataConfig, int], DataBundle]) -> DataBundle:
    """The sources of ``config.sources``, each read by ``load_data`` (the registry's), in one frame."""
    frame = config.height_width
    names, parts, records = [], [], {}
    for name, source in config.used_sources.items():
        bundle = load_data(source_config_of(config, name), seed)
        kept = ClassNames(config.classes, config.source_aliases(name))
        mapping = np.array([_index(config.classes, kept(found)) for found in bundle.class_names], np.int32)
        if not np.any(mapping >= 0):
            raise DataError(
                f"data.sources.{name}: none of its classes {bundle.class_names} is one of data.classes "
                f"{config.classes}; map them with data.class_aliases"
            )
        splits = {}
        for split in SPLITS:
            if len(bundle.splits.get(split, ())) == 0:
                raise DataError(f"data.sources.{name} ({bundle.name}) has no {split} examples")
            labels = mapping[bundle.splits[split].labels]
            taken = bundle.splits[split].take(np.flatnonzero(labels >= 0))
            splits[split] = Split(
                in_frame(taken.images, bundle.preparation, frame),
                labels[labels >= 0],
                taken.files,
                np.full(len(taken), len(names), np.int8),
            )
        examples = {split: len(splits[split]) for split in SPLITS}
        rows = epoch_rows(len(splits["train"]), source, seed)
        _check_memory(name, source, len(rows), splits["train"].images[0].nbytes)
        splits["train"] = splits["train"].take(rows)
        left_out = sorted({found for found, index in zip(bundle.class_names, mapping) if index < 0})
        counts = ", ".join(f"{split} {count}" for split, count in examples.items())
        if len(splits["train"]) != examples["train"]:
            counts += f"; {len(splits['train'])} training images an epoch"
        lacks = [cls for index, cls in enumerate(config.classes) if not np.any(splits["train"].labels == index)]
        notes = (f"; classes left out: {left_out}" if left_out else "") + (f"; has no {lacks}" if lacks else "")
        print(f"Source {name}: {bundle.name}, {counts}{notes}", flush=True)
        records[name] = {
            "data": bundle.name,
            "root": str(source.root) if source.root else None,
            "preparation": bundle.preparation,
            "weight": source.weight,
            "examples": examples,
            "train_per_epoch": len(splits["train"]),
            "classes": [cls for cls in config.classes if cls not in lacks],
        }
        names.append(name)
        parts.append(splits)
    pooled = {split: _concatenate([part[split] for part in parts]) for split in SPLITS}
    for label, class_name in enumerate(config.classes):
        if not np.any(pooled["train"].labels == label):
            raise DataError(
                f"class {class_name!r} has no training images in any of data.sources ({', '.join(names)}); "
                "add a source that has it, map a spelling with data.class_aliases, or leave it out of data.classes"
            )
    height, width = frame
    preparation = {"resize": [height, width], "method": RESIZE_METHOD, "sources": records}
    return DataBundle("sources", list(config.classes), pooled, preparation, names)


def _index(classes: list[str], name: str | None) -> int:
    return classes.index(name) if name is not None else -1


def epoch_rows(count: int, source: SourceConfig, seed: int) -> np.ndarray:
    """The training rows of one epoch: ``train_examples`` of them drawn (seeded), then each
    repeated ``weight`` times (a fractional part: that share of them, drawn)."""
    rng = np.random.default_rng([seed, count])
    rows = np.arange(count)
    if source.train_examples is not None and source.train_examples < count:
        rows = np.sort(rng.choice(rows, source.train_examples, replace=False))
    whole, part = divmod(source.weight, 1.0)
    extra = rng.choice(rows, round(part * len(rows)), replace=False) if part else rows[:0]
    return np.concatenate([np.tile(rows, int(whole)), np.sort(extra)])


def _check_memory(name: str, source: SourceConfig, rows: int, image_bytes: int) -> None:
    """A weight whose epoch would not fit in half the machine's memory: one line, before it is made."""
    needed = rows * image_bytes
    available = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    if needed > available / 2:
        raise DataError(
            f"data.sources.{name}.weight = {source.weight:g}: an epoch of {rows:,} of its images needs "
            f"{needed / 2**30:,.1f} GiB, more than half this machine's {available / 2**30:,.0f} GiB; lower the weight "
            "(or draw fewer images with train_examples)"
        )


def in_frame(images: np.ndarray, preparation: dict, frame: tuple[int, int]) -> np.ndarray:
    """uint8 ``[N, h, w, 3]`` -> ``[N, *frame, 3]``: each image where the serving graph would
    put it. Whole images are resized to the frame; a centre crop of a capture (recorded as
    ``center_crop_fraction``) is resized to that fraction of the frame and centred, the rest
    of the frame the mean colour of the image's border."""
    import tensorflow as tf

    height, width = frame
    fraction = float(preparation.get("center_crop_fraction", 1.0))
    inner = (max(1, round(fraction * height)), max(1, round(fraction * width)))
    if images.shape[1:3] == inner and fraction == 1.0:
        return images
    resized = np.concatenate(
        [np.zeros((0, *inner, 3), np.uint8)]
        + [
            tf.cast(
                tf.clip_by_value(
                    tf.round(tf.image.resize(images[start : start + 512], inner, "bilinear", antialias=True)), 0, 255
                ),
                tf.uint8,
            ).numpy()
            for start in range(0, len(images), 512)
        ]
    )
    if fraction == 1.0:
        return resized
    border = np.concatenate([images[:, 0], images[:, -1], images[:, :, 0], images[:, :, -1]], axis=1)
    framed = np.empty((len(images), height, width, 3), np.uint8)
    framed[:] = border.mean(axis=1).round().astype(np.uint8)[:, None, None, :]
    top, left = (height - inner[0]) // 2, (width - inner[1]) // 2
    framed[:, top : top + inner[0], left : left + inner[1]] = resized
    return framed


def _concatenate(splits: list[Split]) -> Split:
    files = [split.files if split.files is not None else np.full(len(split), "", dtype=str) for split in splits]
    return Split(
        np.concatenate([split.images for split in splits]),
        np.concatenate([split.labels for split in splits]),
        np.concatenate(files),
        np.concatenate([split.source for split in splits]),
    )
