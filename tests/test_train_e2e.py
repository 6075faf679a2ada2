"""End to end on a small real slice of BloodMNIST: train, evaluate, export, serve."""

import json
import subprocess
import sys

import numpy as np
import pytest
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from keras_blood import train as train_module
from keras_blood.config import load_config
from tests.conftest import REPO, serve_in_fresh_process

pytestmark = pytest.mark.e2e


@pytest.fixture
def quick_overrides(bloodmnist_root, tmp_path):
    return [
        f"data.root={bloodmnist_root}",
        "data.max_examples=512",
        "train.epochs=1",
        "train.batch_size=64",
        f"output.runs_dir={tmp_path / 'runs'}",
        f"output.export_dir={tmp_path / 'saved_models'}",
    ]


@pytest.mark.parametrize(
    "config_name, extra",
    [
        ("dropout03", []),
        # The best-model recipe, shrunk: augmentation, cosine schedule, D4 TTA in the export.
        ("best", ["model.widths=[8, 16]", "train.warmup_epochs=0"]),
    ],
)
def test_train_evaluate_export_and_serve(quick_overrides, tmp_path, config_name, extra):
    config = load_config(REPO / "configs" / f"{config_name}.yaml", quick_overrides + extra)
    result = train_module.train(config)

    run_dir, version = result.run_dir, result.export_dir
    assert version == tmp_path / "saved_models" / config_name / "1"
    for name in ("metrics.json", "history.csv", "config.yaml", "confusion_matrix.png", "learning_curves.png"):
        assert (run_dir / name).is_file(), name
    assert list((run_dir / "logs" / "train").glob("events.out.tfevents.*"))
    assert list((run_dir / "logs" / "test").glob("events.out.tfevents.*"))
    assert "elapsed_minutes" in (run_dir / "history.csv").read_text().splitlines()[0]
    validation = EventAccumulator(str(run_dir / "logs" / "validation"))
    validation.Reload()
    assert "confusion_matrix" in validation.PluginTagToContent("images")
    assert len(validation.PluginTagToContent("pr_curves")) == 8
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["num_examples"] == 512 and 0.0 <= metrics["accuracy"] <= 1.0
    assert metrics == json.loads((version / "assets.extra" / "metrics.json").read_text())
    assert yaml.safe_load((version / "assets.extra" / "config.yaml").read_text())["name"] == config_name
    assert ("without_tta" in metrics) == (config.eval.tta != "none")
    assert json.loads((version / "assets.extra" / "class_names.json").read_text())[7] == "platelet"

    # A fresh process serves the SavedModel: same predictions as the in-process model.
    pixels = np.load(config.data.root / "bloodmnist.npz")["test_images"][:32]
    served = serve_in_fresh_process(version, pixels, tmp_path)
    in_process = result.model.predict(pixels.astype("float32"), verbose=0)
    np.testing.assert_allclose(served, in_process, rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(served.argmax(1), in_process.argmax(1))


def test_cli_prints_the_version_folder_last_and_never_overwrites(quick_overrides, tmp_path):
    env = {**__import__("os").environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"}
    command = [sys.executable, "-m", "keras_blood.train", str(REPO / "configs" / "fnn.yaml")]
    for item in quick_overrides:
        command += ["--set", item]
    lines = []
    for _ in range(2):
        proc = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, env=env)
        assert proc.returncode == 0, proc.stderr[-2000:]
        lines.append(proc.stdout.strip().splitlines()[-1])
    assert lines == [str(tmp_path / "saved_models" / "fnn" / v) for v in ("1", "2")]
    assert len(list((tmp_path / "runs" / "fnn").iterdir())) == 2
    assert "val_accuracy:" in proc.stdout and "Test (fnn): acc" in proc.stdout
