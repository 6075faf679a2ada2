"""Fine-tuning a published version on a lab's few labelled captures (configs/wbc_lab_finetune.yaml):
nothing held out (data.val_fraction and data.test_fraction 0), the version's classes kept
(data.folder_classes subset) and its recipe checked (model.weights_recipe same)."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from keras_blood.config.loading import load_config
from keras_blood.config.recipe import recipe
from keras_blood.data.sources.image_folder.listing import list_images
from keras_blood.errors import ConfigError, DataError
from tests.helpers import REPO, SHARED_DATA, command_lines, encode, marked_npz

FINETUNE = REPO / "configs" / "wbc_lab_finetune.yaml"
ANDRADE = SHARED_DATA / "labs" / "leukocytes_andrade"
SHOTS = 5  # images a class: the fewest the config is for


def png_folder(root: Path, counts: dict[str, int], size: int = 12) -> Path:
    """Class folders of tiny PNGs, class k a flat grey of its own."""
    for k, (name, count) in enumerate(counts.items()):
        (root / name).mkdir(parents=True)
        for i in range(count):
            pixels = np.full((size, size, 3), 40 + 50 * k + i, np.uint8)
            (root / name / f"{name}_{i}.png").write_bytes(encode(pixels, "PNG"))
    return root


# ----------------------------------------------------------------------------- fast: listing and config


def test_fractions_of_zero_hold_nothing_out_and_a_subset_keeps_the_classes_without_images(tmp_path):
    root = png_folder(tmp_path / "lab", {"eosinophil": 3, "Neutrophil": 2})
    classes = ["neutrophil", "lymphocyte", "eosinophil", "basophil"]
    listing = list_images(root, classes, val_fraction=0, test_fraction=0, folder_classes="subset")
    assert listing.class_names == classes and set(listing.splits.tolist()) == {"train"} and len(listing) == 5
    assert sorted(np.bincount(listing.labels, minlength=4).tolist()) == [0, 0, 2, 3]
    assert any("lymphocyte" in note and "basophil" in note for note in listing.warnings)
    # Without the subset, a class without images is the error it always was.
    with pytest.raises(DataError, match="class 'lymphocyte' has no images"):
        list_images(root, classes, val_fraction=0, test_fraction=0)


def test_a_class_the_model_does_not_have_is_one_line_naming_it_and_the_models_classes(tmp_path):
    root = png_folder(tmp_path / "lab", {"eosinophil": 4, "band": 2})
    with pytest.raises(DataError) as error:
        list_images(root, ["eosinophil", "basophil"], val_fraction=0, test_fraction=0, folder_classes="subset")
    message = str(error.value)
    assert "'band'" in message and "['eosinophil', 'basophil']" in message and "\n" not in message
    # Without the subset, as before: left out and counted.
    assert list_images(root, ["eosinophil"], draw=False, min_classes=1).left_out == {"class band": 2}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["train.early_stopping_patience=8"], "early_stopping_patience = 8 watches the validation loss"),
        (["eval.calibration=temperature"], "eval.calibration fits its temperature on the validation split"),
        (["output.publish_if_better=true"], "publish_if_better compares test accuracies"),
        (["data.name=blood_cell_images", "data.folder_classes=all"], "val_fraction = 0 (nothing held out)"),
        (["data.name=blood_cell_images", "data.val_fraction=0.2", "data.test_fraction=0.2"], "folder_classes is for"),
    ],
)
def test_what_needs_a_held_out_split_is_refused_in_one_line(overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)) as error:
        load_config(FINETUNE, overrides)
    assert "\n" not in str(error.value)


def test_the_fine_tune_recipe_is_that_of_wbc_labs():
    """The config's classes, preparation and model are those of the versions it fine-tunes."""
    finetune, labs = load_config(FINETUNE), load_config(REPO / "configs" / "wbc_labs.yaml")
    assert recipe(finetune, finetune.data.classes) == recipe(labs, labs.data.classes)
    assert finetune.data.undrawn_splits == {"val", "test"} and finetune.model.weights_recipe == "same"


@pytest.mark.slow
def test_nothing_held_out_trains_every_image_keeps_the_last_epoch_and_publishes(tmp_path, command, write_config):
    """The trainer without validation and test splits, on a tiny folder: no early stopping,
    the last epoch's weights, no test figures (one line), and a published version."""
    root = png_folder(tmp_path / "lab", {"a": 6, "b": 6})
    config = write_config(
        {
            "name": "tiny_all_train",
            "data": {
                "name": "image_folder",
                "root": str(root),
                "image_size": 12,
                "val_fraction": 0,
                "test_fraction": 0,
            },
            "model": {"name": "fnn", "hidden_units": 4},
            "train": {"epochs": 2, "batch_size": 4, "early_stopping_patience": 0},
            "output": {"runs_dir": str(tmp_path / "runs"), "publish_dir": str(tmp_path / "saved_models")},
        }
    )
    result = command("keras_blood.train", str(config))
    assert result.returncode == 0, result.stderr
    run = next((tmp_path / "runs" / "tiny_all_train").iterdir())
    split = json.loads((run / "data_split.json").read_text())["data"]
    assert len(split["rows"]) == 12 and {row[2] for row in split["rows"]} == {"train"}
    assert "weights kept are those of the last epoch" in result.stdout
    assert [line for line in result.stdout.splitlines() if line.startswith("No held-out test split")]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["split"] is None and metrics["epochs_run"] == metrics["best_epoch"] == 2
    with (run / "history.csv").open() as rows:  # Keras writes NA where there is no validation figure
        assert all(
            value == "NA" for row in csv.DictReader(rows) for key, value in row.items() if key.startswith("val_")
        )
    version = tmp_path / "saved_models" / "tiny_all_train" / "1"
    assert result.stdout.strip().splitlines()[-1] == str(version)
    assert json.loads((version / "assets.extra" / "metrics.json").read_text())["held_out"] == "none"


@pytest.mark.slow
def test_a_test_split_not_read_is_drawn_and_kept_out_of_the_record(tmp_path, command, write_config):
    """eval.read_test false (a recipe being chosen): the test split is drawn as usual, the run
    has no test figures and says so in one line, and the version records it as not read."""
    root = png_folder(tmp_path / "lab", {"a": 10, "b": 10})
    config = write_config(
        {
            "name": "tiny_test_unread",
            "data": {"name": "image_folder", "root": str(root), "image_size": 12},
            "model": {"name": "fnn", "hidden_units": 4},
            "train": {"epochs": 1, "batch_size": 4},
            "eval": {"read_test": False},
            "output": {"runs_dir": str(tmp_path / "runs"), "publish_dir": str(tmp_path / "saved_models")},
        }
    )
    result = command("keras_blood.train", str(config))
    assert result.returncode == 0, result.stderr
    run = next((tmp_path / "runs" / "tiny_test_unread").iterdir())
    split = json.loads((run / "data_split.json").read_text())["data"]
    assert "test" in {row[2] for row in split["rows"]}
    assert [line for line in result.stdout.splitlines() if line.startswith("The test split is held out and not read")]
    assert "Evaluating on the test split" not in result.stdout
    metrics = json.loads(
        (tmp_path / "saved_models" / "tiny_test_unread" / "1" / "assets.extra" / "metrics.json").read_text()
    )
    assert metrics["split"] is None and metrics["held_out"] == "not read" and "accuracy" not in metrics


# ----------------------------------------------------------------------------- the real few-shot config


@pytest.fixture(scope="module")
def andrade() -> Path:
    if not (ANDRADE / "labels.tsv").is_file():
        pytest.skip(f"the real leukocytes_andrade crops are not at {ANDRADE}")
    return ANDRADE


@pytest.fixture(scope="module")
def wbc_version(tmp_path_factory) -> Path:
    """A tiny published version of configs/wbc_labs.yaml's recipe (its five classes, frame, cell
    crop and model), trained one epoch on a synthetic BloodMNIST file: what is fine-tuned."""
    from keras_blood.training.trainer import train

    out = tmp_path_factory.mktemp("wbc-version")
    (out / "data").mkdir()
    marked_npz(out / "data" / "bloodmnist.npz")
    overrides = [
        "data.sources.kaggle=null",
        "data.sources.bionet=null",
        "data.sources.andrade=null",
        f"data.sources.bloodmnist={{name: bloodmnist, root: '{out / 'data'}', download: false}}",
        f"data.tfds_dir={out / 'tfds'}",
        "train.epochs=1",
        "train.warmup_epochs=0",
        "train.batch_size=64",
        "eval.tta=none",
        f"output.runs_dir={out / 'runs'}",
        f"output.publish_dir={out / 'saved_models'}",
    ]
    train(load_config(REPO / "configs" / "wbc_labs.yaml", overrides))
    return out / "saved_models" / "wbc_labs" / "1"


def few_shots(andrade: Path, folder: Path, extra: str | None = None) -> Path:
    """The first SHOTS images of each class of the andrade crops (no basophils there), copied
    into class folders; ``extra``: one more class folder, of a class no model here has."""
    chosen: dict[str, list[str]] = {}
    for row in csv.DictReader((andrade / "labels.tsv").open(), delimiter="\t"):
        chosen.setdefault(row["label"], []).append(row["file"])
    for label, files in chosen.items():
        for name in [label, *([extra] if extra and label == "monocyte" else [])]:
            (folder / name).mkdir(parents=True, exist_ok=True)
            for file in sorted(files)[:SHOTS]:
                shutil.copy(andrade / file, folder / name / file)
    return folder


def finetune_args(tmp_path: Path, version: Path, lab: Path, *more: str) -> list[str]:
    return [
        str(FINETUNE),
        "--set",
        f"model.weights={version}",
        "--set",
        f"data.root={lab}",
        "--set",
        f"output.runs_dir={tmp_path / 'runs'}",
        "--set",
        f"output.publish_dir={tmp_path / 'saved_models'}",
        *more,
    ]


@pytest.mark.e2e
@pytest.mark.slow
def test_a_version_fine_tuned_on_five_images_a_class_keeps_its_classes(tmp_path, command, andrade, wbc_version):
    lab = few_shots(andrade, tmp_path / "lab")
    result = command(
        "keras_blood.train",
        *finetune_args(tmp_path, wbc_version, lab, "--set", "train.epochs=2", "--set", "eval.tta=none"),
    )
    assert result.returncode == 0, result.stderr
    run = next((tmp_path / "runs" / "wbc_lab_finetune").iterdir())
    split = json.loads((run / "data_split.json").read_text())["data"]
    assert len(split["rows"]) == 4 * SHOTS and {row[2] for row in split["rows"]} == {"train"}
    version = Path(result.stdout.strip().splitlines()[-1])
    source_classes = json.loads((wbc_version / "assets.extra" / "class_names.json").read_text())
    assert "basophil" in source_classes
    assert json.loads((version / "assets.extra" / "class_names.json").read_text()) == source_classes
    metrics = json.loads((version / "assets.extra" / "metrics.json").read_text())
    assert metrics["split"] is None and metrics["transfer"]["head_classes_mapped"] == source_classes
    assert metrics["transfer"]["layers_copied"] == metrics["transfer"]["layers_with_weights"] - 1  # all but the head


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.parametrize(
    ("extra", "overrides", "message"),
    [
        ("band", [], "class 'band' (e.g. band/"),
        (
            None,
            ["data.image_size=[96, 128]"],
            "was trained with data.image_size = [120, 160], this config has [96, 128]",
        ),
        (None, ["model.widths=[8, 16, 32]"], "was trained with model.widths = [16, 32, 64]"),
        (None, ["data.classes=[neutrophil, lymphocyte, monocyte, eosinophil]"], "was trained with data.classes"),
    ],
)
def test_a_folder_or_recipe_the_version_does_not_fit_is_one_line(
    tmp_path, command, andrade, wbc_version, extra, overrides, message
):
    lab = few_shots(andrade, tmp_path / "lab", extra)
    sets = [arg for override in overrides for arg in ("--set", override)]
    result = command("keras_blood.train", *finetune_args(tmp_path, wbc_version, lab, *sets))
    lines = command_lines(result.stderr)
    assert result.returncode == 2 and len(lines) == 1 and message in lines[0], result.stderr
    if extra:
        assert "['neutrophil', 'lymphocyte', 'monocyte', 'eosinophil', 'basophil']" in lines[0]
    assert not (tmp_path / "runs").exists() and not (tmp_path / "saved_models").exists()


@pytest.mark.slow
def test_a_recipe_check_without_a_version_is_one_line(tmp_path, command):
    lab = png_folder(tmp_path / "lab", {"eosinophil": 2, "neutrophil": 2})
    result = command("keras_blood.train", *finetune_args(tmp_path, Path("none"), lab)[:1], "--set", f"data.root={lab}")
    lines = command_lines(result.stderr)
    assert result.returncode == 2 and len(lines) == 1 and "model.weights_recipe 'same'" in lines[0], result.stderr
