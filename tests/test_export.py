import json
import shutil

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_blood import export as export_module
from keras_blood.config import Config
from keras_blood.errors import ExportError
from keras_blood.export import export_model, existing_versions, load_exported, load_version
from keras_blood.models import build_model
from keras_blood.preparation import Preparation, decode_file, preparer
from tests.conftest import encode, serve_in_fresh_process, synthetic_npz


@pytest.fixture
def tiny(tmp_path):
    config = Config.model_validate(
        {
            "name": "tiny",
            "model": {"name": "basic", "filters": [4, 4, 4], "dense_units": 8},
            "output": {"runs_dir": str(tmp_path / "runs"), "export_dir": str(tmp_path / "sm")},
        }
    )
    keras.utils.set_random_seed(0)
    model = build_model(config.model, (28, 28, 3), 8)
    return config, model


def test_versions_increase_and_never_overwrite(tiny):
    config, model = tiny
    first = export_model(model, config, list("abcdefgh"), {"accuracy": 0.5})
    (first / "assets.extra" / "marker").write_text("keep me")
    second = export_model(model, config, list("abcdefgh"), {"accuracy": 0.6})
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
        export_model(model, config, list("abcdefgh"), {})
    assert list((config.output.export_dir / "tiny").iterdir()) == []


def test_serving_signature_takes_uint8_pixels_in_another_process(tiny, tmp_path):
    config, model = tiny
    version = export_model(model, config, list("abcdefgh"), {})
    pixels = np.random.default_rng(0).integers(0, 256, (5, 28, 28, 3)).astype(np.uint8)
    served = serve_in_fresh_process(version, pixels, tmp_path)
    expected = keras.ops.convert_to_numpy(model(pixels.astype("float32"), training=False))
    np.testing.assert_allclose(served, expected, rtol=1e-5, atol=1e-6)

    serve, class_names = load_exported(version)
    assert class_names == list("abcdefgh")
    assert serve(pixels=pixels)["probabilities"].shape == (5, 8)


BLOODMNIST_RECIPE = {"center_crop_fraction": 200 / 360, "resize": [28, 28], "method": "bicubic"}


def test_bytes_signature_prepares_any_image_like_predict(tiny):
    config, model = tiny
    version = export_model(model, config, list("abcdefgh"), {}, BLOODMNIST_RECIPE)
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
    version = export_model(model, config, list("abcdefgh"), {})
    signatures = tf.saved_model.load(str(version)).signatures
    pixels = np.random.default_rng(1).integers(0, 256, (3, 28, 28, 3)).astype(np.uint8)
    served = signatures["serving_bytes"](images=tf.constant([encode(p, "PNG") for p in pixels]))
    expected = signatures["serving_default"](pixels=tf.constant(pixels))
    np.testing.assert_array_equal(served["probabilities"].numpy(), expected["probabilities"].numpy())


def test_a_recipe_that_does_not_fit_the_model_is_refused(tiny):
    config, model = tiny
    with pytest.raises(ExportError, match="resizes to \\[64, 64\\]"):
        export_model(model, config, list("abcdefgh"), {}, {"resize": [64, 64]})
    assert not list((config.output.export_dir / "tiny").glob("[0-9]*"))
def test_serving_applies_color_extraction_to_raw_pixels(tiny, tmp_path):
    from keras_blood.color import extract_colors

    config, model = tiny
    config = config.model_copy(update={"data": config.data.model_copy(update={"color_extraction": True})})
    version = export_model(model, config, list("abcdefgh"), {})
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (6, 28, 28, 3)).astype(np.uint8)
    pixels[:, 8:20, 8:20] = (110, 60, 200)  # a purple "cell" for the mask to keep
    # A process that knows nothing of keras_blood: the extraction is in the graph.
    served = serve_in_fresh_process(version, pixels, tmp_path)
    extracted = extract_colors(pixels, config.data.color).numpy().astype("float32")
    expected = keras.ops.convert_to_numpy(model(extracted, training=False))
    np.testing.assert_allclose(served, expected, rtol=1e-5, atol=1e-6)
    raw = keras.ops.convert_to_numpy(model(pixels.astype("float32"), training=False))
    assert np.abs(served - raw).max() > 1e-3  # it did change what the model sees
    preparation = json.loads((version / "assets.extra" / "preparation.json").read_text())
    assert preparation["color_extraction"]["hue"] == [110, 165]


def test_serving_crops_to_the_cell_in_graph(tmp_path):
    """A model on 16x16 cell crops serves whole 40x60 images: the crop is in the graph."""
    from keras_blood.color import make_preprocess

    config = Config.model_validate(
        {
            "name": "cropped",
            "data": {"name": "blood_cell_images", "image_size": [40, 60], "color_extraction": True,
                     "cell_crop": {"window": 0.5, "size": 16}},
            "model": {"name": "basic", "filters": [4, 4, 4], "dense_units": 8},
            "output": {"runs_dir": str(tmp_path / "runs"), "export_dir": str(tmp_path / "sm")},
        }
    )
    keras.utils.set_random_seed(0)
    model = build_model(config.model, (16, 16, 3), 4)
    version = export_model(model, config, list("abcd"), {})
    assert load_version(version).serve.structured_input_signature[1]["pixels"].shape.as_list() == [None, 40, 60, 3]
    rng = np.random.default_rng(2)
    pixels = rng.integers(150, 256, (5, 40, 60, 3)).astype(np.uint8)
    for i, (y, x) in enumerate([(10, 10), (30, 50), (20, 30), (5, 55), (35, 5)]):
        pixels[i, y - 4 : y + 4, x - 4 : x + 4] = (110, 60, 200)  # a purple "cell" somewhere
    served = serve_in_fresh_process(version, pixels, tmp_path)
    seen = make_preprocess(config.data)(pixels).numpy().astype("float32")
    assert seen.shape == (5, 16, 16, 3)
    expected = keras.ops.convert_to_numpy(model(seen, training=False))
    np.testing.assert_allclose(served, expected, rtol=1e-5, atol=1e-6)
    preparation = json.loads((version / "assets.extra" / "preparation.json").read_text())
    assert preparation["input_size"] == [40, 60] and preparation["cell_crop"] == {"window": 0.5, "size": 16}


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
    version = export_model(model, config, list("abcdefgh"), {})
    damage(version, how)
    with pytest.raises(ExportError) as info:
        load_version(version)
    message = str(info.value)
    assert message.startswith(f"{version}: this model version is damaged (") and "re-export it" in message
    assert "\n" not in message


@pytest.mark.parametrize("how", DAMAGES[:2])
def test_evaluate_and_predict_exit_2_with_one_line_on_a_damaged_version(tiny, tmp_path, capsys, how):
    from keras_blood import evaluate, predict
    from keras_blood.cli import run_main

    config, model = tiny
    version = export_model(model, config, list("abcdefgh"), {})
    damage(version, how)
    (tmp_path / "data").mkdir()
    synthetic_npz(tmp_path / "data" / "bloodmnist.npz")  # evaluate loads the data first
    (tmp_path / "cell.png").write_bytes(encode(np.zeros((28, 28, 3), np.uint8), "PNG"))
    before = sorted(tmp_path.rglob("*"))
    data = ["--set", f"data.root={tmp_path / 'data'}", "--set", "data.download=false"]
    assert run_main(evaluate.main, [str(version), *data, "--output-dir", str(tmp_path / "reports")]) == 2
    assert run_main(predict.main, [str(version), str(tmp_path / "cell.png"), "--output", str(tmp_path / "p.csv")]) == 2
    errors = capsys.readouterr().err.splitlines()
    assert len(errors) == 2  # one line from each command
    assert all(line.startswith(f"error: {version}: this model version is damaged (") for line in errors)
    assert sorted(tmp_path.rglob("*")) == before  # no report folder, no CSV, no temporary file
