"""Helpers the test modules share that are not fixtures: paths, synthetic data, encoders."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"
BLOODMNIST_ROOT = SHARED_DATA / "bloodmnist"
KAGGLE_ROOT = SHARED_DATA / "blood-cell-images" / "dataset2-master" / "images"
BCCD_FIELDS = SHARED_DATA / "labs" / "bccd_fields"


# TensorFlow's C++ runtime logs through absl before a process sets logging up, whatever
# TF_CPP_MIN_LOG_LEVEL says: "Could not find cuda drivers" on a machine without a GPU, say.
TF_LOG_LINE = re.compile(
    r"WARNING: All log messages before absl::InitializeLog\(\)|[IWEF]\d{4} [\d:.]+ +\d+ \S+:\d+\] "
)


def command_lines(stderr: str) -> list[str]:
    """The lines a command wrote to stderr itself: TensorFlow's C++ start-up logs left out."""
    return [line for line in stderr.strip().splitlines() if not TF_LOG_LINE.match(line)]


def synthetic_npz(path: Path, n: tuple[int, int, int] = (40, 16, 16), size: int = 28, seed: int = 0):
    """A tiny MedMNIST-format file whose classes differ in brightness (so they are learnable)."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, count in zip(("train", "val", "test"), n):
        labels = np.arange(count) % 8
        base = (labels * 30)[:, None, None, None]
        images = np.clip(base + rng.integers(0, 20, (count, size, size, 3)), 0, 255).astype(np.uint8)
        arrays[f"{split}_images"] = images
        arrays[f"{split}_labels"] = labels.reshape(-1, 1).astype(np.uint8)
    np.savez(path, **arrays)
    return arrays


def marked_npz(path, counts=(160, 48, 48), seed=0):
    """A tiny BloodMNIST-format file where class k is noise around a bright centred square
    of side 2k + 2: told apart in a few steps, and the same under flips and rotations
    (as cells are, so test-time augmentation keeps it)."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, count in zip(("train", "val", "test"), counts):
        labels = np.arange(count) % 8
        images = rng.integers(0, 60, (count, 28, 28, 3))
        for i, label in enumerate(labels):
            images[i, 13 - label : 15 + label, 13 - label : 15 + label] = 250
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = images.astype(np.uint8), labels[:, None].astype(np.uint8)
    np.savez(path, **arrays)
    return arrays


def encode(image: np.ndarray, fmt: str) -> bytes:
    """uint8 ``[H, W, 3]`` (or ``[H, W]``, ``[H, W, 4]``) as file bytes: PNG, JPEG, BMP, GIF or TIFF."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def capture_from(small: np.ndarray, seed: int = 0, shape=(360, 363)) -> np.ndarray:
    """A PBC-like capture whose MedMNIST recipe (centre 200x200 crop, resize) gives ~``small``.

    ``small`` is upsampled (bicubic) into the centred 200x200 square; the rest is noise,
    which a wrong crop would pull in.
    """
    from PIL import Image

    side = round(200 / 360 * min(shape))
    capture = np.random.default_rng(seed).integers(0, 256, (*shape, 3)).astype(np.uint8)
    top, left = (shape[0] - side) // 2, (shape[1] - side) // 2
    capture[top : top + side, left : left + side] = np.asarray(
        Image.fromarray(small).resize((side, side), Image.BICUBIC)
    )
    return capture


def kaggle_tree(root: Path, layout: dict[str, dict[str, int]], size=(30, 40), per_source: int = 3) -> Path:
    """A tiny Kaggle-style tree: ``layout[split][class] = number of source cells``, each
    with ``per_source`` JPEGs named ``_<source>_<rand>.jpeg``. Classes differ in colour."""
    import cv2

    rng = np.random.default_rng(0)
    serial = iter(range(10**6))  # unique names, like Kaggle's random suffixes
    classes = sorted({name for split in layout.values() for name in split})
    for split, counts in layout.items():
        for name, sources in counts.items():
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            base = np.array([40 + 60 * classes.index(name), 120, 200 - 50 * classes.index(name)])
            for source in range(sources):
                for _ in range(per_source):
                    noise = rng.integers(0, 20, (*size, 3))
                    bgr = np.clip(base + noise, 0, 255).astype(np.uint8)
                    cv2.imwrite(str(folder / f"_{source}_{next(serial)}.jpeg"), bgr)
    return root


def cell_at(centre, radius=6, size=(40, 60), specks=()) -> np.ndarray:
    """A purple disc (a white cell) on pale pink, plus one-pixel purple specks."""
    image = np.empty((*size, 3), np.uint8)
    image[:] = (225, 180, 185)
    yy, xx = np.mgrid[: size[0], : size[1]]
    image[(yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2] = (110, 60, 200)
    for y, x in specks:
        image[y, x] = (110, 60, 200)
    return image


FORMATS = ("PNG", "JPEG", "BMP", "TIFF", "GIF")
COLOURS = {"eosinophil": (200, 60, 60), "lymphocyte": (60, 60, 200), "neutrophil": (60, 180, 60)}


def lab_folder(root: Path, per_class: int = 30, folders=None, seed: int = 0) -> Path:
    """Class folders of noisy single-colour captures, of varying sizes, in every format:
    ``<folder>/slide<k>_<i>.<ext>``, ten slides."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    folders = folders or {name: name for name in COLOURS}
    for name, folder in folders.items():
        for i in range(per_class):
            pixels = np.clip(rng.normal(COLOURS[name], 20, (40 + i, 36 + 2 * i, 3)), 0, 255).astype(np.uint8)
            kind = FORMATS[i % len(FORMATS)]
            path = root / folder / f"slide{i % 10}_{i}.{kind.lower()}"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(path, format=kind)
    return root
