import subprocess
import sys

import pytest

from keras_blood.config import GEORGETOWN_PRESETS, apply_overrides, load_config
from keras_blood.errors import ConfigError
from tests.conftest import REPO

CONFIGS = sorted((REPO / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_shipped_configs_are_valid_and_named_after_their_file(path):
    config = load_config(path)
    assert config.name == path.stem
    if path.stem != "best":  # one config per paper model, named after it
        assert config.model.name == path.stem


def test_every_paper_model_has_a_config():
    expected = {"cnn", "fnn", "vgg16", *GEORGETOWN_PRESETS}
    assert expected <= {p.stem for p in CONFIGS}


def test_presets_fill_their_parameters(write_config):
    config = load_config(write_config({"model": {"name": "ridge_dropout01"}}))
    assert (config.model.l2, config.model.dense_dropout, config.model.l1) == (1e-3, 0.1, 0.0)
    # An explicit value wins over the preset.
    config = load_config(write_config({"model": {"name": "dropout03", "dense_dropout": 0.2}}))
    assert config.model.dense_dropout == 0.2


def test_overrides_are_typed_and_dotted(write_config):
    path = write_config({"model": {"name": "cnn"}})
    config = load_config(
        path,
        ["train.epochs=3", "train.learning_rate=1e-4", "model.filters=[8, 16]", "data.root=/d", "seed=7"],
    )
    assert config.train.epochs == 3 and isinstance(config.train.epochs, int)
    assert config.train.learning_rate == 1e-4
    assert config.model.filters == (8, 16)
    assert str(config.data.root) == "/d"
    assert config.seed == 7


def test_override_creates_missing_sections():
    assert apply_overrides({}, ["a.b.c=1"]) == {"a": {"b": {"c": 1}}}


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["train.epoch=3"], ["train.epoch", "unknown key", "epochs"]),
        (["train.epochs=many"], ["train.epochs", "'many'", "integer"]),
        (["model.dense_dropout=1.5"], ["model.dense_dropout", "1.5", "less than 1"]),
        (["model.name=resnet50"], ["model.name", "'resnet50'", "'cnn'", "'dropout03'"]),
        (["data.image_size=30"], ["data.image_size", "30", "28, 64, 128 or 224"]),
        (["train.optimizer=adagrad"], ["train.optimizer", "'adagrad'", "'adam'"]),
        (["model.conv_dropout=0.1", "model.dropout=0.2"], ["model.dropout", "unknown key"]),
        (["train.epochs"], ["KEY=VALUE"]),
    ],
)
def test_bad_values_name_key_value_and_what_is_allowed(write_config, overrides, expected):
    path = write_config({"model": {"name": "dropout03"}})
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    for fragment in expected:
        assert fragment in str(info.value)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


@pytest.mark.parametrize(
    "content, overrides, expected",
    [
        ({"train": {"epochs": -1}}, [], "train.epochs = -1"),
        # Valid config, but no data and no download: fails before a run folder exists.
        ({}, ["data.download=false"], "bloodmnist.npz does not exist"),
    ],
)
def test_cli_errors_exit_2_with_one_line_and_write_nothing(write_config, tmp_path, content, overrides, expected):
    path = write_config({"model": {"name": "dropout03"}, **content})
    workdir = tmp_path / "work"
    workdir.mkdir()
    command = [sys.executable, "-m", "keras_blood.train", str(path), "--set", f"data.root={tmp_path / 'no_data'}"]
    for item in overrides:
        command += ["--set", item]
    proc = subprocess.run(
        command,
        cwd=workdir,
        capture_output=True,
        text=True,
        env={**__import__("os").environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and expected in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert list(workdir.iterdir()) == [] and not (tmp_path / "no_data").exists()


def test_cosine_schedule_warms_up_then_decays(write_config):
    from keras_blood.train import make_learning_rate

    config = load_config(
        write_config({"model": {"name": "cnn"}}),
        ["train.schedule=cosine", "train.warmup_epochs=2", "train.epochs=10", "train.learning_rate=0.01"],
    )
    schedule = make_learning_rate(config, steps_per_epoch=5)
    lr = [float(schedule(step)) for step in (0, 5, 10, 30, 50)]
    assert lr[0] == 0.0 and lr[1] == pytest.approx(0.005) and lr[2] == pytest.approx(0.01)
    assert lr[2] > lr[3] > lr[4] and lr[4] == pytest.approx(0.0, abs=1e-6)
