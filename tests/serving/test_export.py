"""Published versions (keras_blood.serving.export, publish, version): numbered and never
overwritten, the serving signatures a model server calls, damaged versions named with the fix,
and when training publishes."""

import json
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_blood.config.schema import CellCropConfig, Config, DataConfig
from keras_blood.data import load_data
from keras_blood.errors import ExportError
from keras_blood.files import host_name
from keras_blood.models.registry import build_model
from keras_blood.preparation.decode import Preparation, decode_file, preparer
from keras_blood.serving import export as export_module
from keras_blood.serving import version as version_module
from keras_blood.serving.export import publish_model
from keras_blood.serving.publish import NotPublished, check_publish_target, should_publish, skip_reason
from keras_blood.serving.version import existing_versions, load_exported, load_version
from tests.helpers import REPO, encode, synthetic_npz


@pytest.fixture
def tiny(tmp_path):
    config = Config.model_validate(
        {
            "name": "tiny",
            "model": {"name": "basic", "filters": [4, 4, 4], "dense_units": 8},
            "output": {"runs_dir": str(tmp_path / "runs"), "publish_dir": str(tmp_path / "sm")},
        }
    )
    keras.utils.set_random_seed(0)
    model = build_model(config.model, (28, 28, 3), 8)
    return config, model


def test_versions_increase_and_never_overwrite(tiny):
    config, model = tiny
    first = publish_model(model, config, list("abcdefgh"), {"accuracy": 0.5})
    (first / "assets.extra" / "marker").write_text("keep me")
    second = publish_model(model, config, list("abcdefgh"), {"accuracy": 0.6})
    assert (first.name, second.name) == ("1", "2")
    assert (first / "assets.extra" / "marker").read_text() == "keep me"
    assert json.loads((second / "assets.extra" / "metrics.json").read_text()) == {"accuracy": 0.6}
    assert (second / "assets.extra" / "config.yaml").is_file()
    assert existing_versions(second.parent) == [1, 2]


def test_a_failed_export_leaves_no_partial_version(tiny, monkeypatch):
    config, model = tiny

    def crash(*args, **kwargs):
        raise RuntimeError("disk full")

    # Fails after the SavedModel is written, while assets.extra is being filled.
    monkeypatch.setattr(export_module, "save_config", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        publish_model(model, config, list("abcdefgh"), {})
    assert list((config.output.publish_dir / "tiny").iterdir()) == []


def test_serving_signature_takes_uint8_pixels_in_another_process(tiny, model_server):
    config, model = tiny
    version = publish_model(model, config, list("abcdefgh"), {})
    pixels = np.random.default_rng(0).integers(0, 256, (5, 28, 28, 3)).astype(np.uint8)
    served = model_server(version, pixels)
    expected = keras.ops.convert_to_numpy(model(pixels.astype("float32"), training=False))
    np.testing.assert_allclose(served, expected, rtol=1e-5, atol=1e-6)

    serve, class_names = load_exported(version)
    assert class_names == list("abcdefgh")
    assert serve(pixels=pixels)["probabilities"].shape == (5, 8)


BLOODMNIST_RECIPE = {"center_crop_fraction": 200 / 360, "resize": [28, 28], "method": "bicubic"}


def test_bytes_signature_prepares_any_image_like_predict(tiny):
    config, model = tiny
    version = publish_model(model, config, list("abcdefgh"), {}, BLOODMNIST_RECIPE)
    assert json.loads((version / "assets.extra" / "preparation.json").read_text()) == {
        "input_size": [28, 28],
        **BLOODMNIST_RECIPE,
    }
    loaded = load_version(version)
    assert loaded.preparation == Preparation((28, 28), 200 / 360, "bicubic")
    assert (loaded.name, loaded.number) == ("tiny", "1")
    rng = np.random.default_rng(0)
    images = [
        encode(rng.integers(0, 256, (360, 363, 3)).astype(np.uint8), "PNG"),
        encode(rng.integers(0, 256, (240, 320, 3)).astype(np.uint8), "JPEG"),
        encode(rng.integers(0, 256, (31, 17)).astype(np.uint8), "BMP"),  # greyscale
        encode(rng.integers(0, 256, (50, 50, 4)).astype(np.uint8), "PNG"),  # RGBA
    ]
    served = loaded.loaded.signatures["serving_bytes"](images=tf.constant(images))["probabilities"].numpy()
    prepare = preparer(loaded.preparation)
    pixels = np.stack([prepare(decode_file(data)).numpy() for data in images])
    expected = loaded.serve(pixels=tf.constant(pixels))["probabilities"].numpy()
    np.testing.assert_array_equal(served, expected)
    # ... and the recipe matters: a plain resize of the whole image gives other inputs.
    plain = np.stack([preparer(Preparation((28, 28)))(decode_file(data)).numpy() for data in images])
    assert not np.array_equal(plain, pixels)


def test_bytes_signature_of_a_model_input_sized_png_equals_the_pixel_signature(tiny):
    config, model = tiny
    version = publish_model(model, config, list("abcdefgh"), {})
    signatures = tf.saved_model.load(str(version)).signatures
    pixels = np.random.default_rng(1).integers(0, 256, (3, 28, 28, 3)).astype(np.uint8)
    served = signatures["serving_bytes"](images=tf.constant([encode(p, "PNG") for p in pixels]))
    expected = signatures["serving_default"](pixels=tf.constant(pixels))
    np.testing.assert_array_equal(served["probabilities"].numpy(), expected["probabilities"].numpy())


def test_a_recipe_that_does_not_fit_the_model_is_refused(tiny):
    config, model = tiny
    with pytest.raises(ExportError, match="resizes to \\[64, 64\\]"):
        publish_model(model, config, list("abcdefgh"), {}, {"resize": [64, 64]})
    assert not list((config.output.publish_dir / "tiny").glob("[0-9]*"))


def test_serving_applies_color_extraction_to_raw_pixels(tiny, model_server):
    from keras_blood.preparation.color import extract_colors

    config, model = tiny
    config = config.model_copy(update={"data": config.data.model_copy(update={"color_extraction": True})})
    version = publish_model(model, config, list("abcdefgh"), {})
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (6, 28, 28, 3)).astype(np.uint8)
    pixels[:, 8:20, 8:20] = (110, 60, 200)  # a purple "cell" for the mask to keep
    # A process that knows nothing of keras_blood: the extraction is in the graph.
    served = model_server(version, pixels)
    extracted = extract_colors(pixels, config.data.color).numpy().astype("float32")
    expected = keras.ops.convert_to_numpy(model(extracted, training=False))
    np.testing.assert_allclose(served, expected, rtol=1e-5, atol=1e-6)
    raw = keras.ops.convert_to_numpy(model(pixels.astype("float32"), training=False))
    assert np.abs(served - raw).max() > 1e-3  # it did change what the model sees
    preparation = json.loads((version / "assets.extra" / "preparation.json").read_text())
    assert preparation["color_extraction"]["hue"] == [110, 165]


def test_serving_crops_to_the_cell_in_graph(tmp_path, model_server):
    """A model on 16x16 cell crops serves whole 40x60 images: the crop is in the graph."""
    from keras_blood.preparation.steps import make_preprocess

    config = Config.model_validate(
        {
            "name": "cropped",
            "data": {
                "name": "blood_cell_images",
                "image_size": [40, 60],
                "color_extraction": True,
                "cell_crop": {"window": 0.5, "size": 16},
            },
            "model": {"name": "basic", "filters": [4, 4, 4], "dense_units": 8},
            "output": {"runs_dir": str(tmp_path / "runs"), "publish_dir": str(tmp_path / "sm")},
        }
    )
    keras.utils.set_random_seed(0)
    model = build_model(config.model, (16, 16, 3), 4)
    version = publish_model(model, config, list("abcd"), {})
    assert load_version(version).serve.structured_input_signature[1]["pixels"].shape.as_list() == [None, 40, 60, 3]
    rng = np.random.default_rng(2)
    pixels = rng.integers(150, 256, (5, 40, 60, 3)).astype(np.uint8)
    for i, (y, x) in enumerate([(10, 10), (30, 50), (20, 30), (5, 55), (35, 5)]):
        pixels[i, y - 4 : y + 4, x - 4 : x + 4] = (110, 60, 200)  # a purple "cell" somewhere
    served = model_server(version, pixels)
    seen = make_preprocess(config.data)(pixels).numpy().astype("float32")
    assert seen.shape == (5, 16, 16, 3)
    expected = keras.ops.convert_to_numpy(model(seen, training=False))
    np.testing.assert_allclose(served, expected, rtol=1e-5, atol=1e-6)
    preparation = json.loads((version / "assets.extra" / "preparation.json").read_text())
    assert preparation["input_size"] == [40, 60]
    assert preparation["cell_crop"] == CellCropConfig(window=0.5, size=16).model_dump(mode="json")


def damage(version, how: str) -> None:
    if how == "no variables/":
        shutil.rmtree(version / "variables")
    else:
        pb = version / "saved_model.pb"
        pb.write_bytes(pb.read_bytes()[: pb.stat().st_size // 2 if how == "truncated saved_model.pb" else 0])


DAMAGES = ["no variables/", "truncated saved_model.pb", "empty saved_model.pb"]


@pytest.mark.parametrize("how", DAMAGES)
def test_a_damaged_version_is_named_with_the_fix(tiny, how):
    config, model = tiny
    version = publish_model(model, config, list("abcdefgh"), {})
    damage(version, how)
    with pytest.raises(ExportError) as info:
        load_version(version)
    message = str(info.value)
    assert message.startswith(f"{version}: this model version is damaged (") and "publish a new one" in message
    assert "\n" not in message


@pytest.mark.parametrize("how", DAMAGES[:2])
def test_evaluate_and_predict_exit_2_with_one_line_on_a_damaged_version(tiny, tmp_path, capsys, how):
    from keras_blood import evaluate, predict
    from keras_blood.config.cli import run_main

    config, model = tiny
    version = publish_model(model, config, list("abcdefgh"), {})
    damage(version, how)
    (tmp_path / "data").mkdir()
    synthetic_npz(tmp_path / "data" / "bloodmnist.npz")  # evaluate loads the data first
    # Prepared here: its one-off notices (a rebuilt file's MD5) are not what this test is about.
    load_data(DataConfig(root=tmp_path / "data"))
    (tmp_path / "cell.png").write_bytes(encode(np.zeros((28, 28, 3), np.uint8), "PNG"))
    capsys.readouterr()
    before = sorted(tmp_path.rglob("*"))
    data = ["--set", f"data.root={tmp_path / 'data'}", "--set", "data.download=false"]
    assert run_main(evaluate.main, [str(version), *data, "--output", str(tmp_path / "reports")]) == 2
    assert run_main(predict.main, [str(version), str(tmp_path / "cell.png"), "--output", str(tmp_path / "p.csv")]) == 2
    errors = capsys.readouterr().err.splitlines()
    assert len(errors) == 2  # one line from each command
    assert all(line.startswith(f"error: {version}: this model version is damaged (") for line in errors)
    assert sorted(tmp_path.rglob("*")) == before  # no report folder, no CSV, no temporary file


# ----------------------------------------------------------------------------- publishing


def with_output(config, **changes):
    return config.model_copy(update={"output": config.output.model_copy(update=changes)})


def test_another_signature_is_refused_before_training_and_at_publish_time(tiny, monkeypatch):
    config, model = tiny
    first = publish_model(model, config, list("abcdefgh"), {})
    assert json.loads((first / "assets.extra" / "signature.json").read_text()) == {
        "input_shape": [28, 28, 3],
        "dtype": "uint8",
        "class_names": list("abcdefgh"),
    }
    check_publish_target(config, list("abcdefgh"), (28, 28, 3))  # the same signature: fine
    # A Kaggle model (4 classes, 120x160) under the BloodMNIST model's name: its clients would break.
    with pytest.raises(ExportError) as refused:
        check_publish_target(config, list("abcd"), (120, 160, 3))
    message = str(refused.value)
    assert "output.name 'tiny'" in message and "--set output.name=tiny-bloodmnist" in message
    assert "uint8 28x28x3 -> 8 classes [a, b, c" in message and "uint8 120x160x3 -> 4 classes" in message
    assert "\n" not in message
    # Versions exported before signature.json existed are read from their SavedModel.
    (first / "assets.extra" / "signature.json").unlink()
    assert version_module.read_signature(first) == version_module.Signature((28, 28, 3), "uint8", tuple("abcdefgh"))
    with pytest.raises(ExportError, match="8 classes"):
        check_publish_target(config, list("bacdefgh"), (28, 28, 3))  # the same classes, another order
    # Version 1 published after the checks before the export: refused at the rename, nothing left behind.
    monkeypatch.setattr(export_module, "check_publish_target", lambda *args: None)
    with pytest.raises(ExportError, match="output.name 'tiny'"):
        publish_model(model, config, list("abcdefgx"), {})
    assert sorted(p.name for p in first.parent.iterdir()) == ["1"]
    # Under its own name it is published.
    assert publish_model(model, with_output(config, name="tiny-x"), list("abcdefgx"), {}).parent.name == "tiny-x"


def test_smoke_runs_publish_only_when_asked(tiny, tmp_path):
    config, model = tiny
    smoke = config.model_copy(update={"data": config.data.model_copy(update={"max_examples": 1})})
    assert should_publish(config) and not should_publish(smoke)
    assert "data.max_examples=1" in skip_reason(smoke) and "output.publish=always" in skip_reason(smoke)
    with pytest.raises(NotPublished, match="smoke run"):
        publish_model(model, smoke, list("abcdefgh"), {})
    assert not config.output.publish_dir.exists()
    # A run that will not publish does not care where it would have.
    (tmp_path / "afile").write_text("")
    check_publish_target(with_output(smoke, publish_dir=tmp_path / "afile" / "x"), list("ab"), (1, 1, 3))
    assert publish_model(model, with_output(smoke, publish="always"), list("abcdefgh"), {}).name == "1"
    with pytest.raises(NotPublished, match="never"):
        publish_model(model, with_output(config, publish="never"), list("abcdefgh"), {})


def test_no_export_flag_means_publish_never(monkeypatch, tmp_path):
    from keras_blood import train as train_command
    from keras_blood.training import trainer as train_module

    seen = []

    def train(config, resume=None):
        seen.append(config)
        return train_module.TrainResult(None, {}, tmp_path, None)

    monkeypatch.setattr(train_module, "train", train)
    assert train_command.main([str(REPO / "configs" / "dropout03.yaml"), "--no-export"]) is None
    assert seen[0].output.publish == "never" and not should_publish(seen[0])


def test_publish_if_better_compares_like_with_like(tiny, capsys):
    config, model = tiny
    config = with_output(config, publish_if_better=True)
    measured = {"split": "test", "num_examples": 100}
    publish_model(model, config, list("abcdefgh"), {**measured, "accuracy": 0.8})  # the first: nothing to beat
    with pytest.raises(NotPublished, match=r"test accuracy 0\.8000 does not beat version 1's 0\.8000"):
        publish_model(model, config, list("abcdefgh"), {**measured, "accuracy": 0.8})
    assert publish_model(model, config, list("abcdefgh"), {**measured, "accuracy": 0.81}).name == "2"
    with pytest.raises(NotPublished, match="0.7000 does not beat version 2's 0.8100"):
        publish_model(model, config, list("abcdefgh"), {**measured, "accuracy": 0.7})
    # Figures from another number of examples are not comparable: published, and said so.
    capsys.readouterr()
    third = publish_model(model, config, list("abcdefgh"), {"split": "test", "num_examples": 50, "accuracy": 0.5})
    assert third.name == "3" and "publishing without comparing" in capsys.readouterr().out
    # Without publish_if_better, a worse model is published.
    worse = {**measured, "accuracy": 0.1}
    assert publish_model(model, with_output(config, publish_if_better=False), list("abcdefgh"), worse).name == "4"


def test_an_unwritable_publish_dir_is_found_before_training(tiny, tmp_path):
    config, model = tiny
    (tmp_path / "afile").write_text("")  # a folder under a regular file can never be created, even by root
    config = with_output(config, publish_dir=tmp_path / "afile" / "x")
    with pytest.raises(ExportError, match=r"output.publish_dir '.*afile/x': cannot write to .*Not a directory"):
        check_publish_target(config, list("abcdefgh"), (28, 28, 3))
    with pytest.raises(ExportError, match="output.publish_dir"):
        publish_model(model, config, list("abcdefgh"), {})


def test_versions_are_readable_by_other_users(tiny):
    config, model = tiny
    previous = os.umask(0o077)  # even under a private umask
    try:
        version = publish_model(model, config, list("abcdefgh"), {})
    finally:
        os.umask(previous)
    modes = {p.relative_to(version): stat.S_IMODE(p.stat().st_mode) for p in [version, *version.rglob("*")]}
    assert modes[Path(".")] == 0o755 and modes[Path("variables")] == 0o755
    assert modes[Path("saved_model.pb")] == 0o644 and modes[Path("assets.extra/class_names.json")] == 0o644
    assert set(modes.values()) == {0o755, 0o644}


def test_stale_staging_folders_of_dead_processes_are_removed(tiny):
    config, model = tiny
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = host_name()
    base = config.output.publish_dir / "tiny"
    names = {
        "dead": f".export-{host}-{dead.pid}-k2j4h5g6",
        "alive": f".export-{host}-{os.getpid()}-a1b2c3d4",
        "other host": f".export-another-host-{dead.pid}-a1b2c3d4",
        "old legacy": ".export-ab12cd34",
        "new legacy": ".export-ef56gh78",
    }
    for name in names.values():
        (base / name / "variables").mkdir(parents=True)
    day_ago = time.time() - 25 * 3600
    os.utime(base / names["old legacy"], (day_ago, day_ago))
    version = publish_model(model, config, list("abcdefgh"), {})
    left = {p.name for p in base.iterdir()}
    assert left == {version.name, names["alive"], names["other host"], names["new legacy"]}


@pytest.mark.slow
def test_train_checks_the_target_before_training_and_says_why_it_did_not_publish(tmp_path, capsys):
    from keras_blood.config.loading import load_config
    from keras_blood.training.trainer import train

    synthetic_npz(tmp_path / "bloodmnist.npz")
    overrides = [
        f"data.root={tmp_path}",
        "data.download=false",
        "data.max_examples=40",
        "train.epochs=1",
        f"output.runs_dir={tmp_path / 'runs'}",
        f"output.publish_dir={tmp_path / 'sm'}",
    ]
    config = load_config(REPO / "configs" / "dropout03.yaml", overrides)
    result = train(config)
    assert result.export_dir is None and not (tmp_path / "sm").exists()
    assert "Not published: a smoke run (data.max_examples=40)" in capsys.readouterr().out
    # A 4-class model already serves under the name: refused before a run folder is made.
    keras.utils.set_random_seed(0)
    other = with_output(config, publish="always")
    publish_model(build_model(other.model, (28, 28, 3), 4), other, list("abcd"), {})
    runs = {p.name for p in (tmp_path / "runs" / "dropout03").iterdir()}
    with pytest.raises(ExportError, match="output.name 'dropout03'.*4 classes.*8 classes"):
        train(other)
    assert {p.name for p in (tmp_path / "runs" / "dropout03").iterdir()} == runs
