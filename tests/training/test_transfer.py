"""Weights from another keras-blood model (model.weights), fine_tune_from and the two-stage
schedule, on models built (not trained) and tiny synthetic data."""

import json
import re
from pathlib import Path

import keras
import numpy as np
import pytest

from keras_blood import train as train_command
from keras_blood.config.cli import run_main
from keras_blood.config.loading import validate_config
from keras_blood.config.schema import Config
from keras_blood.data.sources.bloodmnist.builder import CLASS_NAMES
from keras_blood.errors import ConfigError
from keras_blood.models.ensemble import average_models
from keras_blood.models.registry import BUILDERS, named_layers
from keras_blood.models.temperature import with_temperature
from keras_blood.models.tta import with_tta
from keras_blood.training import task as task_module
from keras_blood.training import trainer as train_module
from keras_blood.training.runs import RunFolder
from keras_blood.training.transfer import prepare_transfer, set_trainable, training_stages
from tests.helpers import marked_npz

KAGGLE = ["EOSINOPHIL", "LYMPHOCYTE", "MONOCYTE", "NEUTROPHIL"]  # the Kaggle folders
SHARED = [CLASS_NAMES.index(name.lower()) for name in KAGGLE]  # where BloodMNIST has them

# One small model of each builder in the registry (the Georgetown presets share one).
SMALL = {
    "fnn": {"name": "fnn", "hidden_units": 8},
    "cnn": {"name": "cnn", "filters": [4, 8], "dense_units": 8},
    "georgetown": {"name": "dropout01x3", "filters": [4, 4, 8], "dense_units": 8, "l2": 1e-3},
    "resnet": {"name": "resnet", "widths": [4, 8]},
    "vgg16": {"name": "vgg16", "weights": "none", "dense_units": 8, "fine_tune_from": "block5_conv1"},
}


def make_config(tmp_path, model, name="target", **sections) -> Config:
    raw = {"name": name, "model": model, "output": {"runs_dir": str(tmp_path / "runs")}}
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value}
    return Config.model_validate(raw)


def source_run(tmp_path, model, classes=CLASS_NAMES, ensemble=1):
    """A finished-looking run folder (28x28 inputs) whose checkpoints hold freshly built models' weights."""
    config = make_config(tmp_path, model, "source", train={"ensemble": ensemble})
    run = RunFolder.create(config)
    members = []
    for member in range(ensemble):
        model = task_module.build(config, (28, 28, 3), len(classes), member=member if ensemble > 1 else None)
        members.append(model)
        model.save_weights(str(run.checkpoint(RunFolder.tag(member, ensemble))))
    (run.path / "metrics.json").write_text(json.dumps({"class_names": list(classes)}))
    return run.path, members


def transferred(config: Config, class_names, input_shape=(28, 28, 3)):
    """A model of ``config`` with model.weights put in: (model, printed line, transfer)."""
    transfer = prepare_transfer(config)
    model = task_module.build(config, input_shape, len(class_names))
    return model, transfer.apply(model, list(class_names)), transfer


def weights(model, name):
    return named_layers(model)[name].get_weights()


def test_the_cases_below_cover_every_builder():
    assert {type(make_config(Path("."), m).model) for m in SMALL.values()} == set(BUILDERS)


@pytest.mark.parametrize("family", list(SMALL))
def test_every_builder_copies_its_layers_and_maps_the_head_by_class_name(tmp_path, family, capsys):
    run, (source,) = source_run(tmp_path, SMALL[family])  # BloodMNIST's 8 classes
    # The Kaggle folders: upper case, at other places than in BloodMNIST's list.
    kaggle = {"name": "blood_cell_images", "classes": KAGGLE, "cell_crop": None}
    config = make_config(tmp_path, {**SMALL[family], "weights": str(run)}, data=kaggle)
    model, line, transfer = transferred(config, KAGGLE)
    layers = [
        name for name, layer in named_layers(model).items() if layer.weights and not isinstance(layer, keras.Model)
    ]
    assert f"{len(layers) - 1} of {len(layers) - 1} layers copied" in line and "4 of 4 classes" in line
    for name in layers[:-1]:
        for ours, theirs in zip(weights(model, name), weights(source, name)):
            np.testing.assert_array_equal(ours, theirs)
    (kernel, bias), (their_kernel, their_bias) = weights(model, "probabilities"), weights(source, "probabilities")
    np.testing.assert_array_equal(kernel, their_kernel[:, SHARED])
    np.testing.assert_array_equal(bias, their_bias[SHARED])
    record = transfer.record
    assert record["source"] == str(run) and record["config_name"] == "source" and record["data"] == "bloodmnist"
    assert record["classes"] == CLASS_NAMES and record["head_classes_mapped"] == KAGGLE
    assert record["source_config"]["model"]["name"] == SMALL[family]["name"]


def test_other_classes_and_sizes_keep_what_does_not_fit_fresh(tmp_path):
    basic = {"name": "basic", "filters": [4, 4, 8], "dense_units": 8}
    run, (source,) = source_run(tmp_path, basic, classes=["basophil", "platelet"])
    config = make_config(
        tmp_path, {**basic, "weights": str(run)}, data={"name": "blood_cell_images", "classes": KAGGLE}
    )
    transfer = prepare_transfer(config)
    model = task_module.build(config, (64, 64, 3), 4)  # Kaggle cell crops: 64x64
    fresh = {name: weights(model, name) for name in ("dense", "probabilities")}
    line = transfer.apply(model, KAGGLE)
    assert "3 of 4 layers copied" in line and "head new (no class in common" in line
    assert "skipped dense: shape (72, 8), (8,) there, (512, 8), (8,) here" in line
    for name in ("conv2d", "conv2d_1", "conv2d_2"):
        np.testing.assert_array_equal(weights(model, name)[0], weights(source, name)[0])
    for name, before in fresh.items():  # left as initialised
        np.testing.assert_array_equal(weights(model, name)[0], before[0])


def test_fine_tune_from_freezes_what_comes_before_it_whatever_was_built_first(tmp_path):
    cnn = {"name": "cnn", "filters": [4, 8], "dense_units": 8, "fine_tune_from": "dense"}
    first = task_module.build(make_config(tmp_path, cnn), (28, 28, 3), 8)
    second = task_module.build(make_config(tmp_path, cnn), (28, 28, 3), 8)
    assert [layer.name for layer in second.layers] != [layer.name for layer in first.layers]  # Keras numbered them on
    assert list(named_layers(second)) == list(named_layers(first))
    trainable = [name for name, layer in named_layers(second).items() if layer.weights and layer.trainable]
    assert trainable == ["dense", "probabilities"]
    with pytest.raises(ConfigError, match=r"'dens'.*allowed: conv2d, conv2d_1, dense, probabilities"):
        task_module.build(make_config(tmp_path, {**cnn, "fine_tune_from": "dens"}), (28, 28, 3), 8)


def test_an_ensemble_run_gives_its_first_member_and_a_checkpoint_its_own(tmp_path):
    fnn = {"name": "fnn", "hidden_units": 8}
    run, members = source_run(tmp_path, fnn, ensemble=2)
    model, line, _ = transferred(make_config(tmp_path, {**fnn, "weights": str(run)}), CLASS_NAMES)
    assert "member 1 of 2" in line and "member-1.weights.h5" in line
    np.testing.assert_array_equal(weights(model, "dense")[0], weights(members[0], "dense")[0])
    checkpoint = run / "checkpoints" / "member-2.weights.h5"
    model, line, transfer = transferred(make_config(tmp_path, {**fnn, "weights": str(checkpoint)}), CLASS_NAMES)
    assert transfer.record["kind"] == "checkpoint" and "member-2.weights.h5" in line
    np.testing.assert_array_equal(weights(model, "dense")[0], weights(members[1], "dense")[0])


def fake_version(folder, exported, classes, run_dir=None):
    """An exported version as the transfer reads it: assets.extra and, if given, model.keras."""
    (folder / "assets.extra").mkdir(parents=True)
    (folder / "saved_model.pb").write_bytes(b"")
    config = Config.model_validate({"name": "source", "model": {"name": "fnn", "hidden_units": 8}})
    (folder / "assets.extra" / "config.yaml").write_text(json.dumps(config.to_dict()))
    (folder / "assets.extra" / "class_names.json").write_text(json.dumps(classes))
    if run_dir:
        (folder / "assets.extra" / "run.json").write_text(json.dumps({"run_dir": run_dir}))
    if exported is not None:
        exported.save(folder / "model.keras")
    return folder


def test_an_exported_version_gives_the_model_inside_calibration_tta_and_the_ensemble(tmp_path):
    fnn = {"name": "fnn", "hidden_units": 8}
    members = [task_module.build(make_config(tmp_path, fnn), (28, 28, 3), 8, member=k) for k in range(2)]
    exported = with_temperature(with_tta(average_models(members), "flip"), 0.5)  # as export writes it for best.yaml
    version = fake_version(tmp_path / "saved_models" / "source" / "1", exported, CLASS_NAMES)
    model, line, transfer = transferred(make_config(tmp_path, {**fnn, "weights": str(version)}), KAGGLE)
    assert transfer.record["kind"] == "version" and "model.keras" in line and "4 of 4 classes" in line
    np.testing.assert_array_equal(weights(model, "dense")[0], weights(members[0], "dense")[0])
    np.testing.assert_array_equal(
        weights(model, "probabilities")[0], weights(members[0], "probabilities")[0][:, SHARED]
    )


def test_vgg16_on_a_base_weights_file_trains_its_top_first(tmp_path):
    base = tmp_path / "vgg16_base.weights.h5"
    keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3)).save_weights(str(base))
    config = make_config(tmp_path, {**SMALL["vgg16"], "weights": str(base)}, train={"transfer_schedule": "two_stage"})
    assert prepare_transfer(config) is None  # keras.applications reads it into the base
    model = task_module.build(config, (28, 28, 3), 8)
    first, second = training_stages(config, model, None, tmp_path / "backup")
    set_trainable(first.trainable)
    assert len(model.trainable_weights) == 4  # the top's two Dense layers
    set_trainable(second.trainable)
    assert len(model.trainable_weights) == 4 + 3 * 2  # and block5's three convolutions
    assert "from block5_conv1 on" in second.title


@pytest.fixture
def cli(tmp_path, write_config, capsys):
    """Run the train command on tiny synthetic data; (exit status, stderr)."""
    (tmp_path / "data").mkdir()
    marked_npz(tmp_path / "data" / "bloodmnist.npz", counts=(16, 8, 8))

    def run(model: dict, *overrides: str):
        path = write_config(
            {
                "model": model,
                "data": {"root": str(tmp_path / "data"), "download": False},
                "train": {"epochs": 1, "batch_size": 8},
                "output": {"runs_dir": str(tmp_path / "runs" / "new"), "publish_dir": str(tmp_path / "exports")},
            }
        )
        capsys.readouterr()
        status = run_main(train_command.main, [str(path), *[f"--set={item}" for item in overrides]])
        assert not (tmp_path / "runs" / "new").exists()  # stopped before the run folder
        return status, capsys.readouterr().err

    return run


def test_sources_that_do_not_fit_stop_before_training_with_one_line(tmp_path, cli):
    fnn = {"name": "fnn", "hidden_units": 8}
    (tmp_path / "empty").mkdir()
    run, _ = source_run(tmp_path, fnn)
    gray = keras.Sequential(
        [keras.Input((28, 28, 1)), keras.layers.Flatten(), keras.layers.Dense(8, name="probabilities")]
    )
    one_channel = fake_version(tmp_path / "gray" / "1", gray, CLASS_NAMES)
    old = fake_version(tmp_path / "old" / "1", None, CLASS_NAMES, run_dir="/runs/source/20250101-000000")
    cases = [
        (fnn, f"model.weights={tmp_path / 'empty'}", "not a keras-blood run folder"),
        (fnn, f"model.weights={tmp_path / 'nowhere'}", "no such file or folder"),
        (
            {"name": "cnn", "filters": [4, 8]},
            f"model.weights={run}",
            "no layer of the source's fnn model matches this cnn",
        ),
        (fnn, f"model.weights={one_channel}", "takes 28x28x1 pixels, this one 28x28x3: the input channels differ"),
        (fnn, f"model.weights={old}", r"predates the model.keras file .* \(/runs/source/20250101-000000\)"),
        (fnn, "model.weights=imagenet", "ImageNet weights exist for vgg16 only"),
    ]
    for model, override, message in cases:
        status, err = cli(model, override)
        # The synthetic .npz is not the official file: data loading warns about that first.
        lines = [line for line in err.splitlines() if not line.startswith("warning: ")]
        assert status == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
        err = lines[0]
        assert re.search(message, err), err


@pytest.mark.parametrize(
    "train, model, message",
    [
        ({"transfer_schedule": "two_stage"}, {"name": "fnn"}, "model.weights is none"),
        (
            {"transfer_schedule": "two_stage", "epochs": 3},
            {"name": "fnn", "weights": "x"},
            "head_epochs = 3 leaves no epoch",
        ),
        ({"transfer_schedule": "two_stage"}, {"name": "vgg16"}, "unfreezes nothing; set model.fine_tune_from"),
    ],
)
def test_a_two_stage_schedule_needs_weights_epochs_and_something_to_unfreeze(train, model, message):
    with pytest.raises(ConfigError, match=message):
        validate_config({"name": "t", "model": model, "train": train}, "t.yaml")


class Probe(keras.callbacks.Callback):
    """What each epoch trains: trainable weights, learning rate, and the pretrained layer after it."""

    def __init__(self, seen, kill):
        super().__init__()
        self.seen, self.kill = seen, kill

    def on_epoch_begin(self, epoch, logs=None):
        rate = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        head = weights(self.model, "probabilities")[0]
        self.seen.append({"epoch": epoch, "trainable": len(self.model.trainable_weights), "rate": rate, "head": head})

    def on_epoch_end(self, epoch, logs=None):
        self.seen[-1]["dense"] = weights(self.model, "dense")[0].copy()
        self.seen[-1]["head after"] = weights(self.model, "probabilities")[0]
        if self.kill.get("after") == epoch:  # after the backup: as a kill then leaves the run
            self.kill.clear()
            raise KeyboardInterrupt


@pytest.mark.slow
@pytest.mark.parametrize("killed_after", [0, 1], ids=["between-the-stages", "in-the-second"])
def test_two_stages_train_the_head_first_and_resume_where_they_stopped(tmp_path, monkeypatch, capsys, killed_after):
    fnn = {"name": "fnn", "hidden_units": 16}
    run, (source,) = source_run(tmp_path, fnn)
    (tmp_path / "data").mkdir()
    marked_npz(tmp_path / "data" / "bloodmnist.npz", counts=(64, 16, 16))
    config = make_config(
        tmp_path,
        {**fnn, "weights": str(run)},
        data={"root": str(tmp_path / "data"), "download": False},
        train={
            "epochs": 3,
            "batch_size": 16,
            "learning_rate": 0.01,
            "transfer_schedule": "two_stage",
            "head_epochs": 1,
            "fine_tune_lr_factor": 0.1,
            "early_stopping_patience": 0,
        },
        output={"publish_dir": str(tmp_path / "saved_models"), "publish": "always" if killed_after else "never"},
    )
    seen, kill = [], {"after": killed_after}
    callbacks = train_module.Trainer.callbacks
    monkeypatch.setattr(train_module.Trainer, "callbacks", lambda *args: callbacks(*args) + [Probe(seen, kill)])
    with pytest.raises(KeyboardInterrupt):
        train_module.train(config)
    (run_dir,) = (tmp_path / "runs" / "target").iterdir()
    assert RunFolder(run_dir).status()["state"] == "training"
    capsys.readouterr()
    result = train_module.train(config, resume=run_dir)
    assert ("Stage 1 of 2" in capsys.readouterr().out) == (killed_after == 0)  # its zero epochs restore its weights

    assert [s["epoch"] for s in seen] == [0, 1, 2]  # no epoch trained twice
    for before, after in zip(seen, seen[1:]):  # each epoch goes on from the last, across the kill too
        np.testing.assert_array_equal(after["head"], before["head after"])
    assert [s["trainable"] for s in seen] == [2, 4, 4]  # the head alone, then all
    assert [s["rate"] for s in seen] == pytest.approx([0.01, 0.001, 0.001])
    np.testing.assert_array_equal(seen[0]["dense"], weights(source, "dense")[0])  # frozen in stage 1
    assert not np.array_equal(seen[2]["dense"], seen[1]["dense"])  # and trained in stage 2
    assert result.metrics["epochs_run"] == 3 and len(train_module.read_history(run_dir / "history.csv")["loss"]) == 3
    assert result.metrics["transfer"]["source"] == str(run) and result.metrics["transfer"]["layers_copied"] == 1
    if result.export_dir is not None:
        exported = json.loads((result.export_dir / "assets.extra" / "metrics.json").read_text())
        assert exported["transfer"] == result.metrics["transfer"]
