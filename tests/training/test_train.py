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
from tests.helpers import synthetic_npz


@pytest.mark.slow
def test_an_ensemble_with_tta_is_evaluated_and_exported_as_one_model(synthetic):
    config = synthetic(converged=True, train={"ensemble": 2}, eval={"tta": "d4"})
    result = train_module.train(config)
    metrics = result.metrics
    # Every member is trained to convergence on separable classes.
    assert metrics["accuracy"] > 0.9 and metrics["without_tta"]["accuracy"] > 0.9
    assert all(member["accuracy"] > 0.9 for member in metrics["members"])
    assert [m["seed"] for m in metrics["members"]] == task_module.member_seeds(config.seed, 2)
    assert (
        metrics["epochs_run"] == 12
        and metrics["params"] == 2 * task_module.build(config, (28, 28, 3), 8).count_params()
    )
    assert result.model.name.endswith("_tta_d4")
    assert json.loads((result.run_dir / "status.json").read_text()) == {
        "state": "finished",
        "members_done": 2,
        "export": str(result.export_dir),
    }
    assert json.loads((result.export_dir / "assets.extra" / "metrics.json").read_text()) == metrics


@pytest.mark.slow
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
        {
            "name": "t",
            "model": {"name": "fnn"},
            "data": {"root": str(tmp_path), "download": False},
            "output": {"runs_dir": str(tmp_path / "runs")},
        }
    )
    with pytest.raises(DataError, match="val"):
        train_module.train(config)
    assert not (tmp_path / "runs").exists()


def test_a_member_whose_record_ends_its_schedule_is_not_trained_again(synthetic):
    config = synthetic(train={"epochs": 3, "early_stopping_patience": 2})
    assert train_module.schedule_done({"val_loss": [0.5, 0.6, 0.7]}, config)  # patience used up
    assert train_module.schedule_done({"val_loss": [0.9, 0.8, 0.7]}, config)  # all epochs run
    assert not train_module.schedule_done({"val_loss": [0.9, 0.8]}, config)


def test_balanced_class_weight_lifts_the_rare_classes_and_covers_the_missing_ones():
    labels = np.array([0] * 6 + [1] * 2 + [3] * 4, np.int32)  # class 2 absent
    weights = task_module.balanced_class_weight(labels, 4)
    assert weights == pytest.approx({0: 12 / 18, 1: 12 / 6, 2: 1.0, 3: 12 / 12})
    assert sum(weights[int(cls)] for cls in labels) == pytest.approx(len(labels))  # each present class weighs alike


def test_class_weight_balanced_reaches_fit(synthetic):
    task = task_module.Task.from_config(synthetic(train={"class_weight": "balanced"}))
    inputs = task.build_training_inputs(0)
    labels = task.data.splits["train"].labels
    assert inputs.class_weight == task_module.balanced_class_weight(labels, task.data.num_classes)
    assert task_module.Task.from_config(synthetic()).build_training_inputs(0).class_weight is None
