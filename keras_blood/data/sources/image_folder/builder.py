"""A lab's own images (a tree of class folders or a CSV/TSV list) as a TFDS builder.

    import keras_blood.data.builders, tensorflow_datasets as tfds
    from keras_blood.data.sources.image_folder.builder import make_config
    config = make_config(root="/data/our-lab", classes=("eosinophil", "neutrophil"))
    val = tfds.load("image_folder", builder_kwargs={"config": config}, split="validation", data_dir=D)

What is listed, how classes are matched and how the splits are drawn:
:mod:`keras_blood.data.sources.image_folder.listing`. The config names its source (the folder or list, by a
digest of its path) and every option that changes what is listed, so each lab's folder
and each choice of classes is prepared once, side by side.

Each example keeps its file's bytes where TensorFlow decodes them as they are (JPEG, PNG,
GIF), so nothing is re-encoded; BMP and TIFF are decoded once, by the rule every command
uses (:func:`keras_blood.preparation.decode.decode_file`: 16 bits scaled to 8, grey
repeated into RGB, a palette looked up, alpha dropped; a GIF's first frame; a BMP a few
bytes longer than its header says cut to that length), and stored as PNG. A file that is
not a readable image, or whose header says it has more than ``max_pixels`` pixels (never
decoded), stops the prepare with an error naming it, or, with ``skip_unreadable``, is
left out with a counted warning.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from keras_blood.data.builder_info import LocalDatasetInfo, unreadable, why_unreadable
from keras_blood.data.sources.image_folder.listing import Listing, fingerprint, list_images, shown
from keras_blood.data.splits import SPLITS, TFDS_SPLITS
from keras_blood.errors import DataError
from keras_blood.preparation.limits import MAX_PIXELS

# File signatures stored as they are: JPEG, PNG and GIF, which the one decode rule reads in
# the graph exactly as it reads them anywhere else. Everything else (BMP, TIFF) is decoded
# once by that rule and stored as PNG (_converted), so no later reader meets a BMP's quirks.
KEPT_AS_THEY_ARE = (b"\xff\xd8", b"\x89PNG", b"GIF8")


@dataclasses.dataclass
class ImageFolderConfig(tfds.core.BuilderConfig):
    root: str = ""
    classes: tuple[str, ...] = ()
    class_aliases: str = "{}"  # JSON: {class: [spellings]}, a string so that the config hashes
    group_pattern: str = ""
    val_fraction: float = 0.2
    test_fraction: float = 0.2
    seed: int = 0
    skip_unreadable: bool = False
    max_pixels: int = MAX_PIXELS
    partial_splits: bool = False
    folder_classes: str = "all"

    def listing(self) -> Listing:
        return list_images(
            Path(self.root),
            self.classes or None,
            json.loads(self.class_aliases),
            self.group_pattern or None,
            self.val_fraction,
            self.test_fraction,
            self.seed,
            partial_splits=self.partial_splits,
            folder_classes=self.folder_classes,
        )


def make_config(
    root: str | Path,
    classes: tuple[str, ...] = (),
    class_aliases: dict[str, list[str]] | None = None,
    group_pattern: str | None = None,
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
    seed: int = 0,
    skip_unreadable: bool = False,
    max_pixels: int = MAX_PIXELS,
    partial_splits: bool = False,
    folder_classes: str = "all",
) -> ImageFolderConfig:
    """The config of one source and one way of listing it; its name is a digest of both."""
    root = str(Path(root).expanduser().resolve())
    aliases = json.dumps(class_aliases or {}, sort_keys=True)
    options = [root, list(classes), aliases, group_pattern or "", val_fraction, test_fraction, seed, skip_unreadable]
    if max_pixels != MAX_PIXELS:  # named only when set, so that copies prepared before keep their names
        options.append(max_pixels)
    if partial_splits:
        options.append("partial_splits")
    if folder_classes != "all":
        options.append(f"folder_classes={folder_classes}")
    digest = hashlib.sha1(json.dumps(options).encode()).hexdigest()[:12]
    return ImageFolderConfig(
        name=f"{Path(root).stem[:40] or 'root'}-{digest}".replace(" ", "_"),
        description=(
            f"{root}: classes {list(classes) or 'all'}, val {val_fraction:g}, test {test_fraction:g}, seed {seed}"
        ),
        root=root,
        classes=tuple(classes),
        class_aliases=aliases,
        group_pattern=group_pattern or "",
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        seed=seed,
        skip_unreadable=skip_unreadable,
        max_pixels=max_pixels,
        partial_splits=partial_splits,
        folder_classes=folder_classes,
    )


def _check_classes_left(listing: Listing, paths: list[str], keep: np.ndarray) -> None:
    """A DataError naming the first class that the unreadable files left without images,
    in all or in one split: a class the model cannot learn or be scored on."""
    kept = np.zeros(len(paths), bool)
    kept[keep] = True
    for label, name in enumerate(listing.class_names):
        rows = listing.labels == label
        if np.any(rows) and not np.any(kept & rows):
            raise DataError(
                f"class {name!r}: all its {np.sum(rows)} files are unreadable (e.g. {paths[np.flatnonzero(rows)[0]]}); "
                "replace them with readable images, or leave the class out with data.classes"
            )
        for split in SPLITS:
            in_split = rows & (listing.splits == split)
            if np.any(in_split) and not np.any(kept & in_split):
                raise DataError(
                    f"class {name!r} has no readable images left in the {split} split (its {np.sum(in_split)} files "
                    f"there are unreadable, e.g. {paths[np.flatnonzero(in_split)[0]]}); "
                    "replace them with readable images"
                )


class ImageFolder(tfds.core.GeneratorBasedBuilder):
    """Any folder of class folders, or a list of files and labels: train / validation / test."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Class folders or a CSV/TSV list; splits given or drawn by group."}
    BUILDER_CONFIGS: list[ImageFolderConfig] = []

    def _info(self) -> tfds.core.DatasetInfo:
        return LocalDatasetInfo(
            builder=self,
            description="A lab's own blood-cell images, one class per folder or per list row.",
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(None, None, 3), encoding_format="png"),
                    "label": tfds.features.ClassLabel(),  # names: set when prepared
                    "group": tfds.features.Text(doc="patient, slide or source cell (data.group_pattern)"),
                    "file": tfds.features.Text(doc="path relative to the folder or list"),
                }
            ),
            supervised_keys=("image", "label"),
            disable_shuffling=True,  # the listing's order
            metadata=tfds.core.MetadataDict(),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        config = self.builder_config
        if not config.root:
            raise DataError("image_folder needs a config naming its folder or list: image_folder.make_config(root=...)")
        listing = config.listing()
        # The whole listing's, as the loader takes it before preparing: unreadable files
        # left out below must not make every later run prepare the copy again.
        source_fingerprint = fingerprint(Path(config.root), listing)
        listing = self._readable(listing)
        self.info.features["label"].names = listing.class_names
        self.info.metadata.update(source=config.root, source_fingerprint=source_fingerprint, left_out=listing.left_out)
        return {
            TFDS_SPLITS[name]: self._generate_examples(listing.split(name))
            for name in SPLITS
            if np.any(listing.splits == name)
        }

    def _readable(self, listing: Listing) -> Listing:
        """``listing`` without files that do not decode (DataError unless skip_unreadable)."""
        paths = [str(listing.root / file) for file in listing.files.tolist()]
        missing = [i for i, path in enumerate(paths) if not Path(path).is_file()]
        if missing:
            raise DataError(
                f"{shown(paths[missing[0]])} does not exist ({len(missing)} listed file(s) missing); "
                "fix the list or the folder"
            )
        # The one decode rule, in parallel, each file's header first (data.max_pixels); with
        # OpenCV, which reads what _converted stores as PNG (TIFF, BMPs TensorFlow does not).
        # As bytes: a name that is not UTF-8 is no TensorFlow string, but its bytes name the file.
        bad = unreadable([os.fsencode(path) for path in paths], self.builder_config.max_pixels, opencv=True)
        if not bad:
            return listing
        if not self.builder_config.skip_unreadable:
            raise DataError(
                f"{shown(paths[bad[0]])}: not a readable image "
                f"({why_unreadable(paths[bad[0]], self.builder_config.max_pixels, opencv=True)}); "
                f"{len(bad)} such file(s) in all. Remove them or set data.skip_unreadable: true"
            )
        print(
            f"warning: skipped {len(bad)} of {len(paths)} files that are not readable images "
            f"(e.g. {shown(Path(paths[bad[0]]).name)})",
            file=sys.stderr,
            flush=True,
        )
        keep = np.setdiff1d(np.arange(len(paths)), bad)
        _check_classes_left(listing, paths, keep)
        left_out = {**listing.left_out, "unreadable files": len(bad)}
        return Listing(
            listing.root,
            listing.files[keep],
            listing.labels[keep],
            listing.groups[keep],
            listing.splits[keep],
            listing.class_names,
            left_out,
        )

    def _generate_examples(self, listing: Listing):
        for file, label, group in zip(listing.files.tolist(), listing.labels.tolist(), listing.groups.tolist()):
            data = (listing.root / file).read_bytes()
            if not data.startswith(KEPT_AS_THEY_ARE):
                data = _converted(str(listing.root / file))
            # A name that is not UTF-8 is kept escaped (caf\\xe9.jpg): TFDS stores keys and text as UTF-8.
            yield shown(file), {"image": data, "label": label, "group": shown(group), "file": shown(file)}


def _converted(path: str) -> bytes:
    """A file not kept as it is (BMP, TIFF) as PNG bytes, decoded by the one rule every
    reader follows (:func:`keras_blood.preparation.decode.decode_file`: a BMP longer than
    its header says cut to that length, a palette looked up, TIFF and the BMPs TensorFlow
    does not decode read through OpenCV). ``_readable`` has checked that it decodes."""
    # Imported here: importing the builders (keras_blood.data) must not start TensorFlow,
    # so that a bad config or folder is said at once.
    import tensorflow as tf

    from keras_blood.preparation.decode import decode_file

    try:
        return tf.io.encode_png(decode_file(Path(path).read_bytes())).numpy()
    except (OSError, ValueError) as exc:  # changed since it was checked
        raise DataError(
            f"{path}: not a readable image ({getattr(exc, 'strerror', None) or exc}); "
            "was it changed while the copy was prepared? Run again"
        ) from None
