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
repeated into RGB, a palette looked up, alpha dropped; a GIF's first frame), and stored
as PNG. A file that is not a readable image stops the prepare with an error naming it,
or, with ``skip_unreadable``, is left out with a counted warning.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from keras_blood.data.builder_info import LocalDatasetInfo, unreadable, why_unreadable
from keras_blood.data.sources.image_folder.listing import Listing, fingerprint, list_images
from keras_blood.data.splits import SPLITS, TFDS_SPLITS
from keras_blood.errors import DataError

# File signatures TensorFlow's decode_image reads as they are.
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

    def listing(self) -> Listing:
        return list_images(
            Path(self.root), self.classes or None, json.loads(self.class_aliases), self.group_pattern or None,
            self.val_fraction, self.test_fraction, self.seed,
        )  # fmt: skip


def make_config(
    root: str | Path,
    classes: tuple[str, ...] = (),
    class_aliases: dict[str, list[str]] | None = None,
    group_pattern: str | None = None,
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
    seed: int = 0,
    skip_unreadable: bool = False,
) -> ImageFolderConfig:
    """The config of one source and one way of listing it; its name is a digest of both."""
    root = str(Path(root).expanduser().resolve())
    aliases = json.dumps(class_aliases or {}, sort_keys=True)
    options = [root, list(classes), aliases, group_pattern or "", val_fraction, test_fraction, seed, skip_unreadable]
    digest = hashlib.sha1(json.dumps(options).encode()).hexdigest()[:12]
    return ImageFolderConfig(
        name=f"{Path(root).stem[:40] or 'root'}-{digest}".replace(" ", "_"),
        description=f"{root}: classes {list(classes) or 'all'}, val {val_fraction:g}, test {test_fraction:g}, seed {seed}",
        root=root, classes=tuple(classes), class_aliases=aliases, group_pattern=group_pattern or "",
        val_fraction=val_fraction, test_fraction=test_fraction, seed=seed, skip_unreadable=skip_unreadable,
    )  # fmt: skip


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
        listing = self._readable(listing)
        self.info.features["label"].names = listing.class_names
        self.info.metadata.update(source=config.root, source_fingerprint=fingerprint(Path(config.root), listing),
                                  left_out=listing.left_out)  # fmt: skip
        return {TFDS_SPLITS[name]: self._generate_examples(listing.split(name)) for name in SPLITS if np.any(listing.splits == name)}

    def _readable(self, listing: Listing) -> Listing:
        """``listing`` without files that do not decode (DataError unless skip_unreadable)."""
        paths = [str(listing.root / file) for file in listing.files.tolist()]
        missing = [i for i, path in enumerate(paths) if not Path(path).is_file()]
        if missing:
            raise DataError(f"{paths[missing[0]]} does not exist ({len(missing)} listed file(s) missing); fix the list or the folder")
        bad = unreadable(paths)  # TensorFlow's decoders, in parallel; TIFF is not among them
        bad = [i for i in bad if _converted(paths[i]) is None]
        if not bad:
            return listing
        if not self.builder_config.skip_unreadable:
            raise DataError(
                f"{paths[bad[0]]}: not a readable image ({why_unreadable(paths[bad[0]])}); "
                f"{len(bad)} such file(s) in all. Remove them or set data.skip_unreadable: true"
            )
        print(f"warning: skipped {len(bad)} of {len(paths)} files that are not readable images "
              f"(e.g. {Path(paths[bad[0]]).name})", file=sys.stderr, flush=True)  # fmt: skip
        keep = np.setdiff1d(np.arange(len(paths)), bad)
        left_out = {**listing.left_out, "unreadable files": len(bad)}
        return Listing(listing.root, listing.files[keep], listing.labels[keep], listing.groups[keep],
                       listing.splits[keep], listing.class_names, left_out)  # fmt: skip

    def _generate_examples(self, listing: Listing):
        for file, label, group in zip(listing.files.tolist(), listing.labels.tolist(), listing.groups.tolist()):
            data = (listing.root / file).read_bytes()
            if not data.startswith(KEPT_AS_THEY_ARE):
                data = _converted(str(listing.root / file))
            yield file, {"image": data, "label": label, "group": group, "file": file}


def _converted(path: str) -> bytes | None:
    """A file TensorFlow does not decode as it is (TIFF, some BMPs) as PNG bytes, decoded
    by the rule every command uses; None where it is no readable image."""
    # Imported here: importing the builders (keras_blood.data) must not start TensorFlow,
    # so that a bad config or folder is said at once.
    import tensorflow as tf

    from keras_blood.preparation.decode import decode_file

    try:
        return tf.io.encode_png(decode_file(Path(path).read_bytes())).numpy()
    except (OSError, ValueError, tf.errors.OpError):
        return None
