"""End to end on a small real slice of BloodMNIST: train, evaluate, export, serve."""

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from keras_blood.config.loading import load_config
from keras_blood.training import task as task_module
from keras_blood.training import trainer as train_module
from tests.helpers import REPO

pytestmark = pytest.mark.slow  # every test trains on real data


@pytest.fixture
def quick_overrides(bloodmnist_root, tmp_path):
    return [
        f"data.root={bloodmnist_root}",
        "data.max_examples=512",
        "train.epochs=1",
        "train.batch_size=64",
        f"output.runs_dir={tmp_path / 'runs'}",
        f"output.publish_dir={tmp_path / 'saved_models'}",
        "output.publish=always",  # a smoke run (data.max_examples) is otherwise not published
    ]


def test_train_evaluate_export_and_serve(bloodmnist_model, model_server, bloodmnist_root):
    """The shared real model (dropout03 trained on real BloodMNIST, conftest): its run's
    files, logs and figures, and its version served by another process. The best-model
    recipe (augmentation, cosine schedule, D4 TTA and calibration in the export) is
    trained, exported and served by the ensemble test below."""
    from keras_blood.serving.version import load_keras_model

    run_dir, version = bloodmnist_model.run_dir, bloodmnist_model.export_dir
    assert version.parent.name == "dropout03" and version.name == "1"
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
    # It learnt something, by bounds halfway between chance (always the majority class;
    # AUC 0.5) and where six epochs land, so that another CPU's rounding cannot cross them.
    majority = max(c["support"] for c in metrics["per_class"].values()) / metrics["num_examples"]
    assert metrics["num_examples"] == 3421 and metrics["accuracy"] > majority + 0.1 and metrics["auc"] > 0.7
    assert metrics == json.loads((version / "assets.extra" / "metrics.json").read_text())
    assert yaml.safe_load((version / "assets.extra" / "config.yaml").read_text())["name"] == "dropout03"
    assert json.loads((version / "assets.extra" / "class_names.json").read_text())[7] == "platelet"

    # A fresh process serves the SavedModel: the predictions of the saved Keras model.
    pixels = np.load(bloodmnist_root / "bloodmnist.npz")["test_images"][:32]
    served = model_server(version, pixels)
    in_process = load_keras_model(version).predict(pixels.astype("float32"), verbose=0)
    np.testing.assert_allclose(served, in_process, rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(served.argmax(1), in_process.argmax(1))


def test_an_ensemble_trains_each_member_on_its_own_seed_and_exports_one_model(quick_overrides, tmp_path, model_server):
    extra = ["model.widths=[8, 16]", "train.warmup_epochs=0", "train.ensemble=2", "train.mixed_precision=true"]
    config = load_config(REPO / "configs" / "best.yaml", quick_overrides + extra)
    result = train_module.train(config)

    run_dir, version = result.run_dir, result.export_dir
    for member in ("member-1", "member-2"):
        assert (run_dir / "checkpoints" / f"{member}.weights.h5").is_file()
        assert list((run_dir / "logs" / member / "train").glob("events.out.tfevents.*"))
        history = (run_dir / f"history-{member}.csv").read_text().splitlines()
        assert len(history) == 2 and "elapsed_minutes" in history[0]
    # One clock for the whole ensemble: member 2's epoch ends after member 1's.
    ends = []
    for member in ("member-1", "member-2"):
        with open(run_dir / f"history-{member}.csv") as f:
            ends.append(float(next(csv.DictReader(f))["elapsed_minutes"]))
    assert ends[1] > ends[0]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    members = metrics["members"]
    assert [m["seed"] for m in members] == task_module.member_seeds(config.seed, 2)
    assert members[0]["best_val_loss"] != members[1]["best_val_loss"]  # two seeds, two models
    assert metrics["epochs_run"] == 2  # how well an ensemble learns: tests/training/test_train.py
    assert (
        "without_tta" in metrics and metrics["calibration"]["method"] == "temperature"
    )  # best.yaml's D4 TTA, calibrated
    single = load_config(REPO / "configs" / "best.yaml", quick_overrides + extra[:2])
    from keras_blood.models.registry import build_model

    assert metrics["params"] == 2 * build_model(single.model, (28, 28, 3), 8).count_params()

    pixels = np.load(config.data.root / "bloodmnist.npz")["test_images"][:32]
    served = model_server(version, pixels)
    in_process = result.model.predict(pixels.astype("float32"), verbose=0)
    np.testing.assert_allclose(served, in_process, rtol=1e-4, atol=1e-6)


def test_cli_prints_the_version_folder_last_and_never_overwrites(
    quick_overrides, tmp_path, child_env, capfd, monkeypatch
):
    from keras_blood.config.cli import run_main
    from keras_blood.train import main

    command = [sys.executable, "-m", "keras_blood.train", str(REPO / "configs" / "fnn.yaml")]
    for item in quick_overrides:
        command += ["--set", item]
    proc = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, env=child_env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [proc.stdout.strip().splitlines()[-1]]
    # The same command again, in this process (where TensorFlow has started already).
    monkeypatch.chdir(tmp_path)
    capfd.readouterr()
    assert run_main(main, command[3:]) == 0
    out = capfd.readouterr().out
    lines.append(out.strip().splitlines()[-1])
    assert lines == [str(tmp_path / "saved_models" / "fnn" / v) for v in ("1", "2")]
    assert len(list((tmp_path / "runs" / "fnn").iterdir())) == 2
    assert "val_accuracy:" in proc.stdout and "Test (fnn): acc" in proc.stdout
