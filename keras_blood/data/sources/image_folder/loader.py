"""A lab's own images: ``data.name: image_folder``, ``data.root`` a folder of class folders
or a CSV/TSV list (the layouts: :mod:`.listing`), read through the TFDS builder
``image_folder`` (:mod:`.builder`), prepared once in ``data.tfds_dir`` and again when the
files change.

The folder is listed, and a bad one reported, before TensorFlow starts. Images of any size
are decoded and resized (``area``, the whole image, no crop) to ``data.image_size`` in a
parallel tf.data map; ``data.max_examples`` is applied before decoding.
"""

from __future__ import annotations

from keras_blood.config.schema import DataConfig
from keras_blood.data.base import DataBundle
from keras_blood.data.decoded import RESIZE_METHOD, load_decoded
from keras_blood.data.prepared import prepared_builder, stamp
from keras_blood.data.sources.image_folder.builder import ImageFolder, make_config
from keras_blood.data.sources.image_folder.listing import fingerprint, shown, source_listing


def load_image_folder(config: DataConfig, seed: int = 0) -> DataBundle:
    listing = source_listing(config, seed)
    root = config.given_root()
    print(f"Data: {shown(str(root))}: {listing.counts()}", flush=True)
    current = fingerprint(root.expanduser(), listing)
    builder_config = make_config(
        root,
        tuple(config.classes or ()),
        config.class_aliases,
        config.group_pattern,
        config.val_fraction,
        config.test_fraction,
        seed,
        config.skip_unreadable,
        config.max_pixels,
        config.partial_splits,
        config.folder_classes,
    )
    builder = prepared_builder(
        ImageFolder,
        builder_config,
        tfds_dir=config.resolved_tfds_dir(),
        manual_dir=root if root.is_dir() else root.parent,
        accept=lambda meta: meta.get("source_fingerprint") == current,
        check=lambda: None,  # listed above
    )
    splits, class_names = load_decoded(
        builder.data_dir, stamp(builder.data_dir), config.max_examples, seed, config.height_width, str(listing.root)
    )
    height, width = config.height_width
    return DataBundle(
        "image_folder", class_names, splits, preparation={"resize": [height, width], "method": RESIZE_METHOD}
    )
