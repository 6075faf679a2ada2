"""BloodMNIST (MedMNIST v2): 8 blood-cell classes, read from MedMNIST's own ``.npz`` format.

The file format is read here with NumPy, so the ``medmnist`` package (which depends on
torch) is not needed. A missing file is downloaded from the official Zenodo record and
checked against the official MD5; a file the user provides is validated instead, since
rebuilt copies (same recipe, other split) have other checksums.
"""

from __future__ import annotations

import zipfile
import zlib
from pathlib import Path

import numpy as np

from keras_blood.config import DataConfig
from keras_blood.data import register
from keras_blood.data.base import DataBundle, Split, missing_classes
from keras_blood.data.download import download
from keras_blood.errors import DataError

DEFAULT_ROOT = Path("~/.medmnist")
RECORD = "https://zenodo.org/records/10519652/files"
# Official MD5s, as medmnist.INFO["bloodmnist"] lists them.
MD5 = {
    28: "7053d0359d879ad8a5505303e11de1dc",
    64: "2b94928a2ae4916078ca51e05b6b800b",
    128: "adace1e0ed228fccda1f39692059dd4c",
    224: "b718ff6835fcbdb22ba9eacccd7b2601",
}
CLASS_NAMES = [
    "basophil",
    "eosinophil",
    "erythroblast",
    "immature granulocyte",
    "lymphocyte",
    "monocyte",
    "neutrophil",
    "platelet",
]
SPLITS = ("train", "val", "test")


def file_name(size: int) -> str:
    return "bloodmnist.npz" if size == 28 else f"bloodmnist_{size}.npz"


def url(size: int) -> str:
    return f"{RECORD}/{file_name(size)}?download=1"


def read_npz(path: Path, size: int, num_classes: int = len(CLASS_NAMES)) -> dict[str, Split]:
    """Read and validate a MedMNIST-format file; every problem is a DataError naming it."""
    try:
        archive = np.load(path)
    except Exception as exc:  # np.load raises many types for a broken file
        raise DataError(f"{path}: not a readable .npz file ({exc}); delete it and re-run") from None
    with archive:
        splits = {}
        for split in SPLITS:
            for key in (f"{split}_images", f"{split}_labels"):
                if key not in archive.files:
                    raise DataError(f"{path}: missing array {key!r}; found {sorted(archive.files)}")
            images = _read_array(archive, path, f"{split}_images")
            labels = _read_array(archive, path, f"{split}_labels")
            if images.dtype != np.uint8 or images.shape[1:] != (size, size, 3):
                raise DataError(
                    f"{path}: {split}_images is {images.dtype}{list(images.shape)}, "
                    f"expected uint8[N, {size}, {size}, 3] for data.image_size={size}"
                )
            labels = labels.reshape(-1)
            if labels.shape[0] != images.shape[0]:
                raise DataError(
                    f"{path}: {split} has {images.shape[0]} images but {labels.shape[0]} labels"
                )
            if not np.issubdtype(labels.dtype, np.integer):
                raise DataError(f"{path}: {split}_labels has dtype {labels.dtype}, expected integers")
            if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
                raise DataError(
                    f"{path}: {split}_labels range {labels.min()}..{labels.max()}, "
                    f"expected 0..{num_classes - 1}"
                )
            splits[split] = Split(images, labels.astype(np.int32))
    return splits


def _read_array(archive, path: Path, key: str) -> np.ndarray:
    """One array of an open .npz. np.load reads only the zip's directory; an array's bytes
    are read, decompressed and CRC-checked here, so damage inside the file shows here."""
    try:
        array = archive[key]
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError) as exc:
        # ValueError: a malformed .npy header, or an object array (allow_pickle is off).
        reason = str(exc) or type(exc).__name__
    else:
        if isinstance(array, np.ndarray):
            return array
        reason = "not a NumPy array"  # NpzFile hands back the raw bytes of a non-.npy member
    raise DataError(
        f"{path}: array {key!r} is unreadable ({reason}); the file is damaged: delete it and "
        "re-run so it is downloaded again, or point data.root at a folder with a good copy"
    )


@register("bloodmnist")
def load_bloodmnist(config: DataConfig, seed: int = 0) -> DataBundle:
    size = config.image_size
    path = config.resolved_root(DEFAULT_ROOT) / file_name(size)
    if not path.is_file():
        if not config.download:
            raise DataError(
                f"{path} does not exist and data.download is false. Get it from {url(size)} "
                f"(MD5 {MD5[size]}) or set data.root to the folder that holds {file_name(size)}."
            )
        download(url(size), path, MD5[size])
    bundle = DataBundle(
        name="bloodmnist",
        class_names=list(CLASS_NAMES),
        splits=read_npz(path, size),
        # MedMNIST's recipe: centre crop of the 360x363 capture to 200x200, then resize.
        preparation={"center_crop_fraction": 200 / 360, "resize": [size, size], "method": "bicubic"},
    ).with_classes(config.classes)
    # On the whole file, before data.max_examples: a smoke slice may lack a class, the file may not.
    if empty := missing_classes(bundle.class_names, {k: v.labels for k, v in bundle.splits.items()}):
        listed = ", ".join(f"{name!r} in {split}" for split, name in empty)
        raise DataError(
            f"{path}: no examples of class {listed}; use a complete file (delete this one and "
            "re-run so it is downloaded) or leave the class out with data.classes"
        )
    return bundle
