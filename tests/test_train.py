"""The phases of a training run on tiny synthetic data (no real data needed): ensembles,
test-time augmentation, resuming an ensemble between members, and what stops a run early."""

import json

import numpy as np
import pytest

from keras_blood.config.schema import Config
from keras_blood.errors import DataError
from keras_blood.training import task as task_module
from keras_blood.training import trainer as train_module
from keras_blood.training.runs import RunFolder
from tests.conftest import synthetic_npz


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


@pytest.fixture
def synthetic(tmp_path):
    """A config over a tiny BloodMNIST-format file of easily told classes."""
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


def test_an_ensemble_with_tta_is_evaluated_and_exported_as_one_model(synthetic):
    config = synthetic(train={"ensemble": 2}, eval={"tta": "d4"})
    result = train_module.train(config)
    metrics = result.metrics
    # The classes are separable by brightness: four epochs learn them.
    assert metrics["accuracy"] > 0.9 and metrics["without_tta"]["accuracy"] > 0.9
    assert [m["seed"] for m in metrics["members"]] == task_module.member_seeds(config.seed, 2)
    assert metrics["epochs_run"] == 8 and metrics["params"] == 2 * task_module.build(config, (28, 28, 3), 8).count_params()
    assert result.model.name.endswith("_tta_d4")
    assert json.loads((result.run_dir / "status.json").read_text()) == {
        "state": "finished",
        "members_done": 2,
        "export": str(result.export_dir),
    }
    assert json.loads((result.export_dir / "assets.extra" / "metrics.json").read_text()) == metrics


def test_a_resumed_ensemble_trains_only_the_member_it_was_on(synthetic, capsys):
    config = synthetic(train={"ensemble": 2, "epochs": 2}, output={"publish": "never"})
    first = train_module.train(config)
    run = RunFolder(first.run_dir)
    kept = run.history_csv("member-1").read_text()
    # As a kill during member 2's first epoch leaves it: member 1 done, member 2 not begun.
    run.update_status(state="training", members_done=1, export=None)
    run.history_csv("member-2").unlink()
    run.checkpoint("member-2").unlink()
    capsys.readouterr()

    resumed = train_module.train(config, resume=run.path)
    out = capsys.readouterr().out
    assert "Ensemble member 1 of 2" not in out and "Ensemble member 2 of 2" in out
    assert run.history_csv("member-1").read_text() == kept
    assert len(train_module.read_history(run.history_csv("member-2"))["loss"]) == 2
    assert resumed.metrics["epochs_run"] == 4 and run.finished


def test_missing_splits_stop_before_anything_is_written(tmp_path):
    arrays = synthetic_npz(tmp_path / "bloodmnist.npz")
    arrays["val_images"], arrays["val_labels"] = arrays["val_images"][:0], arrays["val_labels"][:0]
    np.savez(tmp_path / "bloodmnist.npz", **arrays)
    config = Config.model_validate(
        {"name": "t", "model": {"name": "fnn"}, "data": {"root": str(tmp_path), "download": False},
         "output": {"runs_dir": str(tmp_path / "runs")}}
    )  # fmt: skip
    with pytest.raises(DataError, match="val"):
        train_module.train(config)
    assert not (tmp_path / "runs").exists()


def test_a_member_whose_record_ends_its_schedule_is_not_trained_again(synthetic):
    config = synthetic(train={"epochs": 3, "early_stopping_patience": 2})
    assert train_module.schedule_done({"val_loss": [0.5, 0.6, 0.7]}, config)  # patience used up
    assert train_module.schedule_done({"val_loss": [0.9, 0.8, 0.7]}, config)  # all epochs run
    assert not train_module.schedule_done({"val_loss": [0.9, 0.8]}, config)
