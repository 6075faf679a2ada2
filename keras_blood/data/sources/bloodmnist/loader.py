"""BloodMNIST (MedMNIST v2): 8 blood-cell classes, read through the TFDS builder
``bloodmnist/<size>`` (:mod:`.builder`), prepared once in ``data.tfds_dir``.

``data.root`` is the builder's manual folder. Where it holds the size's ``.npz``, the
prepared copy is made from that file (again if the file changes). Where it does not: with
``data.root`` set, that is an error unless ``data.download`` is on (then a copy prepared
from the official file is used, or the file is downloaded); with no ``data.root``, any
prepared copy is used, or the file is downloaded.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from keras_blood.config.schema import DataConfig
from keras_blood.data.base import DataBundle, Split, missing_classes
from keras_blood.data.prepared import prepared_builder, read_all, read_only, stamp
from keras_blood.data.sources.bloodmnist.builder import MD5, Bloodmnist, file_name, source_fingerprint, url
from keras_blood.data.splits import FROM_TFDS
from keras_blood.errors import DataError

DEFAULT_ROOT = Path("~/.medmnist")


def load_bloodmnist(config: DataConfig, seed: int = 0) -> DataBundle:
    size = config.image_size
    given = config.given_root()
    path = (given or DEFAULT_ROOT.expanduser()) / file_name(size)

    def check() -> None:
        if not path.is_file() and not config.download:
            raise DataError(
                f"{path} does not exist and data.download is false. Get it from {url(size)} "
                f"(MD5 {MD5[size]}) or set data.root to the folder that holds {file_name(size)}."
            )

    if path.is_file():
        fingerprint = source_fingerprint(path)
        accept = lambda meta: meta.get("source_fingerprint") == fingerprint  # noqa: E731
    elif given is not None:
        check()
        accept = lambda meta: meta.get("md5") == MD5[size]  # noqa: E731
    else:
        accept = lambda meta: True  # noqa: E731
    builder = prepared_builder(
        Bloodmnist, str(size), tfds_dir=config.resolved_tfds_dir(), manual_dir=path.parent, accept=accept, check=check
    )
    bundle = DataBundle(
        name="bloodmnist",
        class_names=list(builder.info.features["label"].names),
        splits=dict(read_splits(builder.data_dir, stamp(builder.data_dir))),
        # MedMNIST's recipe: centre crop of the 360x363 capture to 200x200, then resize.
        preparation={"center_crop_fraction": 200 / 360, "resize": [size, size], "method": "bicubic"},
    ).with_classes(config.classes)
    # On the whole file, before data.max_examples: a smoke slice may lack a class, the file may not.
    if empty := missing_classes(bundle.class_names, {k: v.labels for k, v in bundle.splits.items()}):
        listed = ", ".join(f"{name!r} in {split}" for split, name in empty)
        raise DataError(
            f"{builder.info.metadata.get('source', path)}: no examples of class {listed}; use a complete "
            "file (delete this one and re-run so it is downloaded) or leave the class out with data.classes"
        )
    return bundle


@functools.lru_cache(maxsize=2)
def read_splits(data_dir: str, _stamp: int) -> dict[str, Split]:
    """Every split of a prepared copy as arrays (memoised per process and copy, so a sweep
    reads it once)."""
    _, splits = read_all(data_dir, list(FROM_TFDS), as_supervised=True)
    return {
        FROM_TFDS[name]: Split(read_only(images), read_only(labels.astype(np.int32)))
        for name, (images, labels) in splits.items()
    }
