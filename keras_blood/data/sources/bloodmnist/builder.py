"""BloodMNIST (MedMNIST v2) as a TFDS builder: 8 blood-cell classes at 28, 64, 128 or 224 px.

    import keras_blood.data.builders, tensorflow_datasets as tfds
    train = tfds.load("bloodmnist/64", split="train", as_supervised=True, data_dir=D)

One config per size (``28`` ... ``224``), one MedMNIST ``.npz`` each, read with NumPy (the
``medmnist`` package, which depends on torch, is not needed). The file is taken from the
manual folder (``download_config.manual_dir``; keras-blood passes ``data.root``) where it
is there, else downloaded from the official Zenodo record. Its MD5 is compared with the
official one: a download must match, a file of the user's that does not (a rebuild, with
its own split) is used with a warning naming both MD5s.

The official MD5s live here, not in a TFDS ``checksums.tsv``: that file takes SHA-256 and
size, which MedMNIST does not publish, and TFDS rejects a manual file whose checksum
differs, where a rebuilt file must be accepted.
"""

from __future__ import annotations

import dataclasses
import sys
import zipfile
import zlib
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from keras_blood.data.builder_info import LocalDatasetInfo, manual_folder
from keras_blood.data.download import download, md5sum
from keras_blood.data.fingerprint import files_fingerprint
from keras_blood.data.splits import SPLITS, TFDS_SPLITS
from keras_blood.errors import DataError

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

# The author lines are split where they pass 120 characters; the text is one BibTeX entry per article.
CITATION = (
    r"""@article{yang2023medmnist,
  title   = {MedMNIST v2 - A large-scale lightweight benchmark for 2D and 3D biomedical image classification},
  author  = {Yang, Jiancheng and Shi, Rui and Wei, Donglai and Liu, Zequan and Zhao, Lin and Ke, Bilian and """
    r"""Pfister, Hanspeter and Ni, Bingbing},
  journal = {Scientific Data},
  volume  = {10},
  number  = {1},
  pages   = {41},
  year    = {2023}
}
@article{acevedo2020pbc,
  title   = {A dataset of microscopic peripheral blood cell images for development of automatic recognition systems},
  author  = {Acevedo, Andrea and Merino, Anna and Alf{\'e}rez, Santiago and Molina, {\'A}ngel and """
    r"""Bold{\'u}, Laura and Rodellar, Jos{\'e}},
  journal = {Data in Brief},
  volume  = {30},
  pages   = {105474},
  year    = {2020}
}"""
)


def file_name(size: int) -> str:
    return "bloodmnist.npz" if size == 28 else f"bloodmnist_{size}.npz"


def url(size: int) -> str:
    return f"{RECORD}/{file_name(size)}?download=1"


def source_fingerprint(path: Path) -> str:
    """What identifies the file a prepared copy was made from, without reading it."""
    return files_fingerprint([(path.name, path)])


def read_npz(path: Path, size: int, num_classes: int = len(CLASS_NAMES)) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{split: (images, labels)}`` of a MedMNIST-format file, validated; every problem
    is a DataError naming the file."""
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
                raise DataError(f"{path}: {split} has {images.shape[0]} images but {labels.shape[0]} labels")
            if not np.issubdtype(labels.dtype, np.integer):
                raise DataError(f"{path}: {split}_labels has dtype {labels.dtype}, expected integers")
            if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
                raise DataError(
                    f"{path}: {split}_labels range {labels.min()}..{labels.max()}, expected 0..{num_classes - 1}"
                )
            splits[split] = (images, labels)
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


def png(image: np.ndarray) -> bytes:
    """Lossless, so the decoded image is the file's array to the byte. OpenCV (it wants
    BGR) with fast settings takes half the CPU time of TFDS's own PNG encoder."""
    import cv2

    params = [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE]
    ok, encoded = cv2.imencode(".png", np.ascontiguousarray(image[..., ::-1]), params)
    assert ok, "PNG encoding of a uint8 image cannot fail"
    return encoded.tobytes()


@dataclasses.dataclass
class BloodmnistConfig(tfds.core.BuilderConfig):
    size: int = 28


class Bloodmnist(tfds.core.GeneratorBasedBuilder):
    """BloodMNIST: MedMNIST v2's blood-cell images (the PBC data set), train/validation/test."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "MedMNIST v2 files (Zenodo record 10519652)."}
    BUILDER_CONFIGS = [
        BloodmnistConfig(name=str(size), size=size, description=f"{size}x{size} RGB images ({file_name(size)})")
        for size in MD5
    ]
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
    Offline, put MedMNIST's file for the size into the manual folder
    (keras-blood: data.root): bloodmnist.npz (28), bloodmnist_64.npz, bloodmnist_128.npz or
    bloodmnist_224.npz, from {RECORD}. Online, a missing file is downloaded.
    """

    def _info(self) -> tfds.core.DatasetInfo:
        size = self.builder_config.size
        return LocalDatasetInfo(
            builder=self,
            description=(
                "BloodMNIST (MedMNIST v2): 17,092 images of individual normal blood cells from "
                "the PBC data set (Acevedo et al. 2020), eight classes, centre-cropped to "
                "200x200 and resized; MedMNIST's 7:1:2 train/validation/test split."
            ),
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(size, size, 3)),
                    "label": tfds.features.ClassLabel(names=CLASS_NAMES),
                }
            ),
            supervised_keys=("image", "label"),
            # The file's order, so a split reads back row for row.
            disable_shuffling=True,
            homepage="https://medmnist.com/",
            citation=CITATION,
            license="CC BY 4.0",
            metadata=tfds.core.MetadataDict(),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        size = self.builder_config.size
        path = self._source_file(dl_manager)
        md5 = md5sum(path)
        if md5 != MD5[size]:
            print(
                f"warning: {path} has MD5 {md5}, not the official {MD5[size]} of {file_name(size)}: "
                "using it as a rebuilt copy (its split and figures may differ from the published ones)",
                file=sys.stderr,
                flush=True,
            )
        arrays = read_npz(path, size)
        self.info.metadata.update(source=str(path), md5=md5, source_fingerprint=source_fingerprint(path))
        # TFDS cannot write an empty split: one the file has no rows for is left out.
        return {
            TFDS_SPLITS[split]: self._generate_examples(*arrays[split]) for split in SPLITS if len(arrays[split][1])
        }

    def _source_file(self, dl_manager) -> Path:
        size = self.builder_config.size
        manual = manual_folder(dl_manager)
        if manual is not None and (manual / file_name(size)).is_file():
            return manual / file_name(size)
        return download(
            url(size),
            Path(dl_manager.download_dir) / file_name(size),
            MD5[size],
            how_to_fix="put it in the manual folder (keras-blood: --set data.root=DIR)",
        )

    def _generate_examples(self, images: np.ndarray, labels: np.ndarray):
        for index, (image, label) in enumerate(zip(images, labels)):
            yield index, {"image": png(image), "label": int(label)}
