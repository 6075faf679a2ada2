"""Fixtures and helpers shared by the test modules, and the rules for the markers.

Markers (pyproject.toml): ``e2e`` is added here to every test that takes a real-data
fixture (``bloodmnist_root``, ``kaggle_root``); ``slow`` (over SLOW_SECONDS on a 2-core
machine) is set by hand, and the summary of a run names the unmarked tests that took
longer. ``pytest -m "not slow"`` is the quick loop; plain ``pytest`` runs everything.
"""

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
KAGGLE_ROOT = SHARED_DATA / "blood-cell-images" / "dataset2-master" / "images"

# Tests that take one of these fixtures read the real data: they are marked e2e here, not by hand.
REAL_DATA_FIXTURES = frozenset({"bloodmnist_root", "kaggle_root"})
# A test over this many seconds (setup, call and teardown) belongs behind the `slow` marker.
SLOW_SECONDS = 10.0


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Mark every test on the real data ``e2e`` (before -m selects), so the marker cannot drift."""
    for item in items:
        if REAL_DATA_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.e2e)


_durations: dict[str, float] = {}
_unmarked: set[str] = set()


def pytest_runtest_logreport(report):
    _durations[report.nodeid] = _durations.get(report.nodeid, 0.0) + report.duration
    if "slow" not in report.keywords:
        _unmarked.add(report.nodeid)


def pytest_terminal_summary(terminalreporter):
    """Name the tests without the ``slow`` marker that took longer than SLOW_SECONDS here."""
    over = sorted((t, n) for n, t in _durations.items() if n in _unmarked and t > SLOW_SECONDS)
    if over:
        terminalreporter.write_sep("-", f"tests over {SLOW_SECONDS:.0f} s without the slow marker")
        for seconds, nodeid in reversed(over):
            terminalreporter.write_line(f"{seconds:6.1f}s {nodeid}")


@pytest.fixture(scope="session", autouse=True)
def shared_tfds_dir(tmp_path_factory):
    """$TFDS_DATA_DIR for the session: where fixtures wider than one test prepare data sets."""
    with pytest.MonkeyPatch.context() as patch:
        path = tmp_path_factory.mktemp("tfds-shared")
        patch.setenv("TFDS_DATA_DIR", str(path))
        yield path


@pytest.fixture(autouse=True)
def tfds_dir(request, monkeypatch, tmp_path_factory, shared_tfds_dir) -> Path:
    """Where this test (and the processes it starts) prepares data sets ($TFDS_DATA_DIR):
    its own folder, so no test sees another's prepared copies; tests on the real data
    share the session's, so it is prepared once."""
    real = REAL_DATA_FIXTURES & set(request.fixturenames)
    path = shared_tfds_dir if real else tmp_path_factory.mktemp("tfds")
    monkeypatch.setenv("TFDS_DATA_DIR", str(path))
    return path


@pytest.fixture
def child_env(tfds_dir) -> dict[str, str]:
    """The environment for a command a test starts: this process's (TF_ENABLE_ONEDNN_OPTS,
    thread settings and $TFDS_DATA_DIR included), with the repository importable and no
    TF_CONFIG of its own."""
    env = {key: value for key, value in os.environ.items() if key != "TF_CONFIG"}
    return {**env, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"}


@pytest.fixture(scope="session")
def bloodmnist_root() -> Path:
    if not (BLOODMNIST_ROOT / "bloodmnist.npz").is_file():
        pytest.skip(f"real BloodMNIST data not found at {BLOODMNIST_ROOT}")
    return BLOODMNIST_ROOT


@pytest.fixture(scope="session")
def kaggle_root() -> Path:
    """The Kaggle "Blood Cell Images" folder (TRAIN/ TEST/ TEST_SIMPLE/ of 320x240 JPEGs)."""
    if not all((KAGGLE_ROOT / split).is_dir() for split in ("TRAIN", "TEST", "TEST_SIMPLE")):
        pytest.skip(f"real Kaggle blood-cell images not found at {KAGGLE_ROOT}")
    return KAGGLE_ROOT


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


@pytest.fixture
def synthetic(tmp_path):
    """make(**sections) -> Config: a config over a tiny BloodMNIST-format file of easily
    told classes (marked_npz), written in tmp_path; ``sections`` update its defaults."""
    from keras_blood.config.schema import Config

    (tmp_path / "data").mkdir()
    marked_npz(tmp_path / "data" / "bloodmnist.npz")

    def make(**sections) -> Config:
        raw = {
            "name": "tiny",
            "model": {"name": "fnn", "hidden_units": 32},
            "data": {"root": str(tmp_path / "data"), "download": False},
            "train": {"epochs": 4, "batch_size": 32, "learning_rate": 0.01, "early_stopping_patience": 0},
            "output": {"runs_dir": str(tmp_path / "runs"), "export_dir": str(tmp_path / "saved_models")},
        }
        for key, value in sections.items():
            raw[key] = {**raw.get(key, {}), **value}
        return Config.model_validate(raw)

    return make


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


def image_folder(root: Path, layout: dict[str, dict[str, int]], size=(30, 40), per_source: int = 3) -> Path:
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


def serve_in_fresh_process(version: Path, pixels: np.ndarray, workdir: Path) -> np.ndarray:
    """Probabilities from ``serving_default`` in a new Python process that imports only
    TensorFlow, as a model server would."""
    import subprocess
    import sys

    np.save(workdir / "pixels.npy", pixels)
    script = (
        "import sys, numpy as np, tensorflow as tf\n"
        "serve = tf.saved_model.load(sys.argv[1]).signatures['serving_default']\n"
        "np.save(sys.argv[3], serve(pixels=tf.constant(np.load(sys.argv[2])))['probabilities'].numpy())\n"
    )
    out = workdir / "served.npy"
    subprocess.run([sys.executable, "-c", script, str(version), str(workdir / "pixels.npy"), str(out)], check=True, cwd=workdir)
    return np.load(out)
