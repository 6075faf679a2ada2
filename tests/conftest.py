from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import yaml

# Quiet TensorFlow's C++ start-up logs in test output.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"
BLOODMNIST_ROOT = SHARED_DATA / "bloodmnist"
KAGGLE_IMAGES = SHARED_DATA / "blood-cell-images" / "dataset2-master" / "images"


@pytest.fixture(scope="session")
def bloodmnist_root() -> Path:
    if not (BLOODMNIST_ROOT / "bloodmnist.npz").is_file():
        pytest.skip(f"real BloodMNIST data not found at {BLOODMNIST_ROOT}")
    return BLOODMNIST_ROOT


@pytest.fixture(scope="session")
def kaggle_images() -> Path:
    """The Kaggle "Blood Cell Images" JPEGs (320x240 captures), for any-size input tests."""
    if not (KAGGLE_IMAGES / "TEST_SIMPLE").is_dir():
        pytest.skip(f"Kaggle blood-cell JPEGs not found at {KAGGLE_IMAGES}")
    return KAGGLE_IMAGES


@pytest.fixture
def write_config(tmp_path):
    """Write a YAML config into tmp_path and return its path."""

    def write(content: dict, name: str = "exp") -> Path:
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(content))
        return path

    return write


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
