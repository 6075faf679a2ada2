"""Fixtures shared by the test modules, and the rules for the markers (helpers that are
not fixtures live in tests/helpers.py, a plain module the tests import).

Markers (pyproject.toml): ``e2e`` is added here to every test that takes a real-data
fixture (``bloodmnist_root``, ``kaggle_root``); ``slow`` (over SLOW_SECONDS on a 2-core
machine) here to every test of a fixture that trains a model or starts TensorFlow in
another process (SLOW_FIXTURES), and by hand to the others. The summary of a run names
the unmarked tests that took longer.
``pytest -m "not slow"`` is the quick loop; plain ``pytest`` runs everything.
"""

from __future__ import annotations

import importlib
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.helpers import BCCD_FIELDS, BLOODMNIST_ROOT, KAGGLE_ROOT, REPO, marked_npz

# One TensorFlow pool thread per process: the suite runs two tests at once on two cores
# (pytest-xdist), many with a child process, and idle pool threads spin for work. Measured
# on the whole suite, 2 cores: 925 s of CPU (515 s) with these and two workers, 1,078 s
# (564 s) without them and three workers (docs/contributing.md). Children inherit them.
for _variable in ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")

# Quiet TensorFlow's C++ start-up logs in test output.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


# Tests that take one of these fixtures read the real data: they are marked e2e here, not by hand.
REAL_DATA_FIXTURES = frozenset({"bloodmnist_root", "kaggle_root"})
# Tests that take one of these fixtures wait for a model to train, or for TensorFlow to
# start in another process: marked slow here.
SLOW_FIXTURES = frozenset({"bloodmnist_model", "square_model", "model_server"})
# A test over this many seconds (setup, call and teardown) belongs behind the `slow` marker.
SLOW_SECONDS = 5.0


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Mark every test on the real data ``e2e``, and every test of a fixture that trains a
    real model ``slow`` (before -m selects), so that these markers cannot drift."""
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if REAL_DATA_FIXTURES & fixtures:
            item.add_marker(pytest.mark.e2e)
        if SLOW_FIXTURES & fixtures:
            item.add_marker(pytest.mark.slow)
    # Slow tests first (in their order), so that the quick ones fill the end of a run and
    # pytest-xdist's workers finish together rather than one waiting on a long test.
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


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


@pytest.fixture(scope="session")
def bccd_fields() -> Path:
    """The BCCD fields (640x480 JPEGs, boxes.tsv with every annotated box)."""
    if not (BCCD_FIELDS / "boxes.tsv").is_file():
        pytest.skip(f"real BCCD fields not found at {BCCD_FIELDS}")
    return BCCD_FIELDS


@pytest.fixture(scope="session")
def bloodmnist_model(bloodmnist_root, shared_tfds_dir, tmp_path_factory):
    """A real model, trained once for the tests that need one that has learnt something:
    dropout03 on real BloodMNIST (6 epochs on 4,000 training images; the whole validation
    and test splits), its probabilities calibrated, exported. ``(run_dir, export_dir)``.

    Trained once for the whole run: under pytest-xdist the first worker to ask trains it in
    the run's shared temporary folder while the others wait on a lock, then read it."""
    import fcntl
    import json
    from types import SimpleNamespace

    from keras_blood.config.loading import load_config
    from keras_blood.training.trainer import train

    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent  # the folder every worker's own folder is in
    root = shared / "bloodmnist-model"
    root.mkdir(exist_ok=True)
    with open(root / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        done = root / "trained.json"
        if not done.is_file():
            overrides = [
                f"data.root={bloodmnist_root}",
                f"data.tfds_dir={shared_tfds_dir}",
                "data.max_examples=4000",
                "train.epochs=6",
                "train.learning_rate=3e-3",
                "eval.calibration=temperature",
                f"output.runs_dir={root / 'runs'}",
                f"output.publish_dir={root / 'saved_models'}",
                "output.publish=always",  # a smoke run (data.max_examples) is otherwise not published
            ]
            result = train(load_config(REPO / "configs" / "dropout03.yaml", overrides))
            done.write_text(json.dumps({"run_dir": str(result.run_dir), "export_dir": str(result.export_dir)}))
        paths = json.loads(done.read_text())
    return SimpleNamespace(run_dir=Path(paths["run_dir"]), export_dir=Path(paths["export_dir"]))


@pytest.fixture
def write_config(tmp_path):
    """Write a YAML config into tmp_path and return its path."""

    def write(content: dict, name: str = "exp") -> Path:
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(content))
        return path

    return write


@pytest.fixture
def synthetic(tmp_path):
    """make(converged=False, **sections) -> Config: a config over a tiny BloodMNIST-format
    file of easily told classes (marked_npz), written in tmp_path; ``sections`` update its
    defaults. The defaults train a few quick steps, not to convergence: a test that needs a
    trained network passes ``converged=True``, whose schedule gets every member right on all
    the validation examples whatever the seed (a higher learning rate or fewer steps leaves
    some members half trained)."""
    from keras_blood.config.schema import Config

    (tmp_path / "data").mkdir()
    marked_npz(tmp_path / "data" / "bloodmnist.npz")

    def make(converged: bool = False, **sections) -> Config:
        raw = {
            "name": "tiny",
            "model": {"name": "fnn", "hidden_units": 32},
            "data": {"root": str(tmp_path / "data"), "download": False},
            "train": {"epochs": 4, "batch_size": 32, "learning_rate": 0.01, "early_stopping_patience": 0},
            "output": {"runs_dir": str(tmp_path / "runs"), "publish_dir": str(tmp_path / "saved_models")},
        }
        if converged:
            raw["train"].update(epochs=6, batch_size=16, learning_rate=0.003)
        for key, value in sections.items():
            raw[key] = {**raw.get(key, {}), **value}
        return Config.model_validate(raw)

    return make


# A model server's view of a SavedModel: a process that imports TensorFlow alone and loads
# each version from its files. It takes a request a line (version, pixels.npy, out.npy) and
# answers with a line that starts "served: " (its other output, TensorFlow's, is skipped).
MODEL_SERVER = """
import sys
import numpy as np
import tensorflow as tf
for request in sys.stdin:
    version, pixels, out = request.rstrip("\\n").split("\\t")
    try:
        serve = tf.saved_model.load(version).signatures["serving_default"]
        np.save(out, serve(pixels=tf.constant(np.load(pixels)))["probabilities"].numpy())
        print("served: ok", flush=True)
    except Exception as exc:
        print(f"served: {type(exc).__name__}: {exc}".replace("\\n", " "), flush=True)
"""


@pytest.fixture(scope="session")
def model_server(tmp_path_factory):
    """serve(version, pixels) -> the probabilities of ``serving_default``, computed in
    another Python process that imports only TensorFlow, as a model server would. One such
    process serves the session (it loads every version afresh from its files): each test
    would otherwise wait seconds for TensorFlow to start."""
    import itertools
    import subprocess
    import sys

    workdir = tmp_path_factory.mktemp("model-server")
    server = subprocess.Popen(
        [sys.executable, "-c", MODEL_SERVER], cwd=workdir, text=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    numbers = itertools.count()

    def serve(version: Path, pixels: np.ndarray) -> np.ndarray:
        number = next(numbers)
        request, out = workdir / f"pixels-{number}.npy", workdir / f"served-{number}.npy"
        np.save(request, pixels)
        server.stdin.write(f"{version}\t{request}\t{out}\n")
        server.stdin.flush()
        answer = ""
        while not answer.startswith("served: "):
            answer = server.stdout.readline()
            assert answer, f"the model server exited ({server.poll()})"
        assert answer.strip() == "served: ok", answer
        return np.load(out)

    yield serve
    server.stdin.close()
    server.wait(timeout=60)


@pytest.fixture
def command(capfd, monkeypatch, tmp_path):
    """run(module, *args) -> CompletedProcess: a command's main run in this process, in
    tmp_path, as its ``python -m`` would run it (TensorFlow is started once, not for each)."""
    from keras_blood.config.cli import run_main

    monkeypatch.chdir(tmp_path)

    def run_here(module: str, *args: str) -> subprocess.CompletedProcess:
        main = importlib.import_module(module).main
        capfd.readouterr()
        status = run_main(main, list(args))
        out, err = capfd.readouterr()
        return subprocess.CompletedProcess([module, *args], status, out, err)

    return run_here
