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


@pytest.fixture
def bloodmnist_root() -> Path:
    if not (BLOODMNIST_ROOT / "bloodmnist.npz").is_file():
        pytest.skip(f"real BloodMNIST data not found at {BLOODMNIST_ROOT}")
    return BLOODMNIST_ROOT


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
