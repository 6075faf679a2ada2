"""Configs (keras_blood.config.loading, schema, presets, sweep): the shipped ones valid, --set
overrides, defaults, and bad values or sweep files named in one line."""

import subprocess
import sys

import pytest
import yaml

from keras_blood.config.loading import apply_overrides, load_config
from keras_blood.config.presets import GEORGETOWN_PRESETS
from keras_blood.config.schema import CellCropConfig, DataConfig
from keras_blood.config.sweep import load_sweep
from keras_blood.errors import ConfigError
from tests.helpers import REPO

ALL_CONFIGS = sorted((REPO / "configs").glob("*.yaml"))
SWEEPS = [p for p in ALL_CONFIGS if "sweep" in yaml.safe_load(p.read_text())]
CONFIGS = [p for p in ALL_CONFIGS if p not in SWEEPS]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_shipped_configs_are_valid_and_named_after_their_file(path):
    config = load_config(path)
    assert config.name == path.stem
    if path.stem not in (
        "best",
        "best_kaggle",
        "vgg16_bloodmnist",
        "image_folder",
        "wbc_multilab",
        "wbc_labs",
        "wbc_lab_finetune",
    ):  # one config per paper model, named after it
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
        (["data.image_size=[60, 80]"], ["data.image_size", "[60, 80]", "28, 64, 128 or 224", "blood_cell_images"]),
        (["data.name=blood_cell_images", "data.image_size=[6, 8, 3]"], ["data.image_size", "[height, width]"]),
        (["data.name=kaggle"], ["data.name", "'kaggle'", "'blood_cell_images'"]),
        (["data.classes=[a, b, A]"], ["data.classes", "more than once: ['A', 'a']"]),
        (["data.color.blur_size=4"], ["data.color", "blur_size = 4", "odd"]),
        (["data.color.hue=[0, 200]"], ["data.color.hue.1", "200", "179"]),
        (["data.color.blur=3"], ["data.color.blur", "unknown key", "blur_size"]),
        (["train.optimizer=adagrad"], ["train.optimizer", "'adagrad'", "'adam'"]),
        (["train.ensemble=0"], ["train.ensemble", "0", "greater than 0"]),
        (["model.conv_dropout=0.1", "model.dropout=0.2"], ["model.dropout", "unknown key"]),
        (["train.epochs"], ["KEY=VALUE"]),
        (["seed=-1"], ["seed = -1", "greater than or equal to 0"]),
        (["seed=4294967296"], ["seed = 4294967296", "less than 4294967296"]),
        (["name=.."], ["name = '..'", "folder name", "starting with a letter"]),
        (["name=."], ["name = '.'", "folder name"]),
        (["name=.hidden"], ["name = '.hidden'", "folder name"]),
        (["name=-x"], ["name = '-x'", "folder name"]),
        (["name=a/b"], ["name = 'a/b'", "folder name"]),
        ([f"name={'a' * 101}"], ["name = 'aaaa", "at most 100"]),
        (["output.name=../other"], ["output.name = '../other'", "folder name"]),
        (["output.name=.hidden"], ["output.name", "starting with a letter"]),
        (["output.publish=sometimes"], ["output.publish", "'auto'", "'never'"]),
        (["eval.read_test=false", "output.publish_if_better=true"], ["eval.read_test = false", "publish_if_better"]),
    ],
)
def test_bad_values_name_key_value_and_what_is_allowed(write_config, overrides, expected):
    path = write_config({"model": {"name": "dropout03"}})
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    for fragment in expected:
        assert fragment in str(info.value)


def test_seed_and_name_at_their_limits_are_accepted(write_config):
    import keras

    path = write_config({"model": {"name": "cnn"}})
    config = load_config(path, [f"seed={2**32 - 1}", f"name=_a.b-{'c' * 95}"])
    assert config.seed == 2**32 - 1 and len(config.name) == 100
    keras.utils.set_random_seed(config.seed)  # the largest seed is one it takes
    with pytest.raises(ValueError):
        keras.utils.set_random_seed(2**32)  # and the config's bound is its own


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
        ({}, ["name=.."], "name = '..'"),  # would write runs/.. and saved_models/..
        # Valid config, but no data and no download: fails before a run folder exists.
        pytest.param({}, ["data.download=false"], "bloodmnist.npz does not exist", marks=pytest.mark.slow),
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
    from keras_blood.training.task import make_learning_rate

    config = load_config(
        write_config({"model": {"name": "cnn"}}),
        ["train.schedule=cosine", "train.warmup_epochs=2", "train.epochs=10", "train.learning_rate=0.01"],
    )
    schedule = make_learning_rate(config, steps_per_epoch=5)
    lr = [float(schedule(step)) for step in (0, 5, 10, 30, 50)]
    assert lr[0] == 0.0 and lr[1] == pytest.approx(0.005) and lr[2] == pytest.approx(0.01)
    assert lr[2] > lr[3] > lr[4] and lr[4] == pytest.approx(0.0, abs=1e-6)


def test_ensemble_members_get_distinct_seeds_that_runs_do_not_share():
    from keras_blood.training.task import member_seeds

    assert member_seeds(7, 1) == [7]
    three = member_seeds(7, 3)
    assert three[0] == 7 and len(set(three)) == 3 and three == member_seeds(7, 3)
    assert member_seeds(7, 2) == three[:2]  # a bigger ensemble only adds members
    # Seed-to-seed spread is only honest if runs with nearby seeds share no member.
    runs = [set(member_seeds(seed, 3)) for seed in range(5)]
    assert all(not (a & b) for i, a in enumerate(runs) for b in runs[i + 1 :])
    assert all(0 <= s < 2**31 for run in runs for s in run)  # valid for keras.utils.set_random_seed


def test_image_size_and_cell_crop_defaults_per_source():
    assert DataConfig().height_width == DataConfig().model_size == (28, 28)
    assert DataConfig().cell_crop is None  # BloodMNIST images are one centred cell already
    kaggle = DataConfig(name="blood_cell_images")
    assert kaggle.height_width == (120, 160) and kaggle.cell_crop == CellCropConfig()
    assert kaggle.model_size == (64, 64) and kaggle.cell_crop.window_side(120, 160) == 64
    assert DataConfig(name="blood_cell_images", image_size=[60, 80]).height_width == (60, 80)
    assert DataConfig(name="blood_cell_images", image_size=48).height_width == (48, 48)
    whole = DataConfig(name="blood_cell_images", image_size=[24, 32], cell_crop=None)
    assert whole.cell_crop is None and whole.model_size == (24, 32)  # null turns it off
    assert DataConfig(cell_crop={"size": 20}).model_size == (20, 20)  # and on, for any source


@pytest.mark.parametrize(
    "override, words",
    [
        ("data.cell_crop.window=0", ["data.cell_crop.window", "greater than 0"]),
        ("data.cell_crop.window=1.5", ["data.cell_crop.window", "less than or equal to 1"]),
        ("data.cell_crop.size=0", ["data.cell_crop.size", "greater than 0"]),
        ("data.cell_crop.side=3", ["data.cell_crop.side"]),
    ],
)
def test_bad_cell_crop_is_named(write_config, override, words):
    path = write_config({"model": {"name": "basic"}, "data": {"name": "blood_cell_images", "cell_crop": {}}})
    with pytest.raises(ConfigError) as info:
        load_config(path, [override])
    for word in words:
        assert word in str(info.value)


def test_output_name_is_the_config_name_plus_a_changed_data_source(write_config):
    dropout03 = REPO / "configs" / "dropout03.yaml"  # data.name: bloodmnist
    assert load_config(dropout03).output.name == "dropout03"
    # A Kaggle model must not become a version of the BloodMNIST model (other classes, input).
    assert load_config(dropout03, ["data.name=blood_cell_images"]).output.name == "dropout03-blood_cell_images"
    assert load_config(dropout03, ["data.name=bloodmnist", "name=d3"]).output.name == "d3"
    assert load_config(dropout03, ["data.name=blood_cell_images", "output.name=kaggle"]).output.name == "kaggle"
    plain = write_config({"model": {"name": "basic"}})  # no data section: BloodMNIST
    assert load_config(plain, ["data.name=bloodmnist"]).output.name == "exp"
    assert load_config(plain, ["data.name=blood_cell_images"]).output.name == "exp-blood_cell_images"
    config = load_config(plain)
    assert config.output.publish == "auto" and config.output.publish_if_better is False
    assert config.model_copy(update={"output": config.output.model_copy(update={"name": None})}).served_name == "exp"


def test_sweep_cells_publish_under_names_of_their_own(write_config):
    path = write_config({"data": {"name": "blood_cell_images"}, "sweep": {"models": ["basic", "dropout03"]}}, "g")
    cells = load_sweep(path).cells
    assert [c.config.output.name for c in cells] == [c.config.name for c in cells]
    assert len({c.config.output.name for c in cells}) == 4
    moved = load_sweep(path, ["data.name=bloodmnist", "data.cell_crop=null", "data.image_size=28"]).cells
    assert moved[0].config.output.name == "g-basic-original-bloodmnist"
    named = load_sweep(path, ["output.name=study"]).cells
    assert [c.config.output.name for c in named[:2]] == ["study-basic-original", "study-basic-color_extraction"]


@pytest.mark.parametrize("split", ["val", "test"])
def test_a_sweep_refuses_a_split_left_undrawn(write_config, split):
    """Cells are compared on their held-out splits: a sweep with nothing held out is one line."""
    path = write_config({"data": {"name": "image_folder", "root": "lab"}, "sweep": {"models": ["basic"]}}, "s")
    with pytest.raises(ConfigError, match=rf"data.{split}_fraction = 0: a sweep compares its cells"):
        load_sweep(path, [f"data.{split}_fraction=0", "train.early_stopping_patience=0"])


def test_the_georgetown_sweep_is_16_validated_cells():
    (path,) = [p for p in SWEEPS if p.stem == "georgetown"]
    sweep = load_sweep(path, ["train.epochs=2", "output.runs_dir=/tmp/r", "sweep.models.vgg16.weights=none"])
    assert sweep.name == "georgetown" and sweep.results_dir.as_posix() == "/tmp/r/georgetown"
    assert [c.key for c in sweep.cells[:3]] == ["basic-original", "basic-color_extraction", "dropout01-original"]
    assert len(sweep.cells) == 16
    assert set(sweep.spec.models) == {*GEORGETOWN_PRESETS, "vgg16"}
    for cell in sweep.cells:
        config = cell.config
        assert config.name == f"georgetown-{cell.label}-{cell.input}"
        assert config.model.name == cell.label
        assert config.data.color_extraction == (cell.input == "color_extraction")
        assert config.train.epochs == 2  # --set reaches every cell
        assert config.output.runs_dir.as_posix() == "/tmp/r/georgetown/runs"
        assert config.data.name == "blood_cell_images" and config.data.height_width == (120, 160)
        assert config.data.model_size == (64, 64)
    assert sweep.cells[-1].config.model.weights == "none"


def test_sweep_models_as_a_list_and_one_input(write_config):
    path = write_config({"sweep": {"models": ["dropout03", {"name": "cnn", "filters": [4, 8]}]}})
    sweep = load_sweep(path, ["sweep.inputs=[color_extraction]"])
    assert [c.key for c in sweep.cells] == ["dropout03-color_extraction", "cnn-color_extraction"]
    assert sweep.cells[1].config.model.filters == (4, 8)


@pytest.mark.parametrize(
    "content, overrides, expected",
    [
        (
            {"sweep": {"models": {"dropout03": {}}}},
            ["sweep.models.dropout03.dense_dropout=2"],
            ["sweep.models.dropout03.dense_dropout = 2", "less than 1"],
        ),
        (
            {"sweep": {"models": {"dropout03": {}}}},
            ["sweep.models.dropout03.dropout=0.1"],
            ["sweep.models.dropout03.dropout", "unknown key", "dense_dropout"],
        ),
        ({"sweep": {"models": {"resnet9": {}}}}, [], ["sweep.models.resnet9.name = 'resnet9'", "unknown model"]),
        ({"sweep": {"models": ["basic", "resnet9"]}}, [], ["sweep.models.resnet9.name = 'resnet9'", "unknown model"]),
        ({"sweep": {"models": [{"name": "cnn", "filters": [0, 8]}]}}, [], ["sweep.models.cnn.filters.0 = 0"]),
        ({"sweep": {"models": ["basic"]}}, ["sweep.inputs=[grey]"], ["sweep.inputs.0 = 'grey'", "'original'"]),
        ({"sweep": {"models": ["basic"], "repeat": 2}}, [], ["sweep.repeat", "unknown key", "inputs"]),
        ({"sweep": {"models": ["basic"]}}, ["train.epochs=0"], ["train.epochs = 0"]),
        ({"model": {"name": "basic"}, "sweep": {"models": ["basic"]}}, [], ["model:", "sweep.models"]),
        ({"model": {"name": "basic"}}, [], ["needs a `sweep:` section"]),
    ],
)
def test_bad_sweep_files_name_the_key(write_config, content, overrides, expected):
    with pytest.raises(ConfigError) as info:
        load_sweep(write_config(content), overrides)
    for fragment in expected:
        assert fragment in str(info.value)
