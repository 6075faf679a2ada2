"""Edge formats: LiteRT and ONNX copies of a version's serving_default, and their parity."""

import glob
import importlib

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_blood import export_edge as edge_command
from keras_blood.config.cli import run_main
from keras_blood.config.schema import Config
from keras_blood.data.sources.bloodmnist.builder import CLASS_NAMES
from keras_blood.models.registry import build_model
from keras_blood.models.tta import with_tta
from keras_blood.serving import edge as edge_module
from keras_blood.serving.edge import edge_file, export_edge, load_edge_model, predict, saved_model_predictor
from keras_blood.serving.export import publish_model
from keras_blood.serving.version import load_version

for runtime in ("ai_edge_litert", "tf2onnx", "onnxruntime"):
    pytest.importorskip(runtime, reason=f"the edge extra is not installed ({runtime}): pip install -e '.[edge]'")


def cell_pixels(count, size=(40, 60), seed=0):
    """Pale pink fields with a purple disc (a white cell) somewhere, some at an edge."""
    rng = np.random.default_rng(seed)
    images = np.clip(rng.normal((225, 180, 185), 12, (count, *size, 3)), 0, 255).astype(np.uint8)
    yy, xx = np.mgrid[: size[0], : size[1]]
    for image in images:
        y, x = rng.integers(0, size[0]), rng.integers(0, size[1])
        image[(yy - y) ** 2 + (xx - x) ** 2 <= rng.integers(9, 40)] = rng.normal((110, 60, 200), 15, 3).clip(0, 255)
    return images


def export(tmp_path, data, model_config, input_shape, num_classes, tta="none"):
    config = Config.model_validate(
        {
            "name": "edge",
            "data": data,
            "model": model_config,
            "output": {"runs_dir": str(tmp_path / "runs"), "publish_dir": str(tmp_path / "sm")},
        }
    )
    keras.utils.set_random_seed(0)
    model = with_tta(build_model(config.model, input_shape, num_classes), tta)
    return publish_model(model, config, [f"c{k}" for k in range(num_classes)], {})


@pytest.fixture(scope="module")
def kaggle_like(tmp_path_factory):
    """A Kaggle-style version: 40x60 images, the cell crop (resized 20 -> 16) and colour
    extraction in the graph: every preparation step the edge formats must carry."""
    data = {
        "name": "blood_cell_images",
        "image_size": [40, 60],
        "color_extraction": True,
        "cell_crop": {"window": 0.5, "size": 16},
    }
    version = export(
        tmp_path_factory.mktemp("kaggle"),
        data,
        {"name": "basic", "filters": [4, 4, 4], "dense_units": 8},
        (16, 16, 3),
        4,
    )
    return version


@pytest.fixture(scope="module")
def kaggle_extent(tmp_path_factory):
    """best_kaggle.yaml's preparation: a crop sized by the cell, with its aspect ratio,
    and per-crop stain normalisation."""
    data = {
        "name": "blood_cell_images",
        "image_size": [40, 60],
        "stain_normalize": "channels",
        "cell_crop": {"fit": "extent", "extent_aspect": True, "size": 16},
    }
    return export(
        tmp_path_factory.mktemp("extent"),
        data,
        {"name": "basic", "filters": [4, 4, 4], "dense_units": 8},
        (16, 16, 3),
        4,
    )


@pytest.fixture(scope="module")
def bloodmnist_tta(tmp_path_factory):
    """best.yaml's shape: a residual network with D4 test-time views on 28x28 pixels."""
    model = {"name": "resnet", "widths": [4, 8], "blocks_per_stage": 1}
    version = export(tmp_path_factory.mktemp("tta"), {"name": "bloodmnist"}, model, (28, 28, 3), 8, tta="d4")
    return version


def assert_parity(version, path, pixels):
    expected = predict(saved_model_predictor(load_version(version)), pixels)
    got = predict(load_edge_model(path), pixels)
    assert got.shape == expected.shape and got.dtype == np.float32
    assert np.abs(got - expected).max() <= 1e-4
    np.testing.assert_array_equal(got.argmax(1), expected.argmax(1))


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["litert", "onnx"])
def test_float_edge_models_give_the_saved_models_probabilities(kaggle_like, bloodmnist_tta, fmt):
    path = export_edge(kaggle_like, fmt)
    assert path == edge_file(kaggle_like, fmt) and path.parent == kaggle_like / "edge"
    assert not list(path.parent.glob(".tmp-*"))
    assert oct(path.stat().st_mode & 0o777) == "0o644"
    assert_parity(kaggle_like, path, cell_pixels(70))  # batches of 64 and 6: any batch size
    rng = np.random.default_rng(1)
    assert_parity(
        bloodmnist_tta, export_edge(bloodmnist_tta, fmt), rng.integers(0, 256, (9, 28, 28, 3), dtype=np.uint8)
    )


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["litert", "onnx"])
def test_the_extent_crop_converts(kaggle_extent, fmt):
    assert_parity(kaggle_extent, export_edge(kaggle_extent, fmt), cell_pixels(70, seed=2))


# kaggle_like: seconds of conversion where the (slow) float test has not made its edge files.
@pytest.mark.parametrize("version", [pytest.param("kaggle_like", marks=pytest.mark.slow), "kaggle_extent"])
def test_parity_on_real_kaggle_images(version, kaggle_root, request):
    """The cell crops and colour extraction on real stains (the test split), not only on
    synthetic discs: the same probabilities."""
    import cv2

    version = request.getfixturevalue(version)
    files = sorted(glob.glob(str(kaggle_root / "TEST" / "*" / "*.jpeg")))[::40][:64]
    pixels = np.stack(
        [
            cv2.resize(cv2.cvtColor(cv2.imread(f), cv2.COLOR_BGR2RGB), (60, 40), interpolation=cv2.INTER_AREA)
            for f in files
        ]
    )
    for fmt in ("litert", "onnx"):
        path = edge_file(version, fmt)
        assert_parity(version, path if path.is_file() else export_edge(version, fmt), pixels)


@pytest.mark.slow  # the only other user of bloodmnist_tta, whose conversion takes seconds
def test_parity_on_real_bloodmnist_images(bloodmnist_tta, bloodmnist_root):
    pixels = np.load(bloodmnist_root / "bloodmnist.npz")["test_images"][::50]
    for fmt in ("litert", "onnx"):
        path = edge_file(bloodmnist_tta, fmt)
        assert_parity(bloodmnist_tta, path if path.is_file() else export_edge(bloodmnist_tta, fmt), pixels)


def op_dtypes(path):
    """(op name, output dtype) of every op in a .tflite file."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    return [(op["op_name"], tensors[op["outputs"][0]]["dtype"]) for op in interpreter._get_ops_details()]


def colour_corner_npz(path, n=(400, 80, 160)):
    """A MedMNIST-format file whose 8 classes are the 8 corners of the RGB cube, with
    noise: linearly separable by the mean colour, so a short seeded run learns them with a
    wide margin whatever the CPU's float rounding. Classes one brightness step apart (as in
    tests.helpers.synthetic_npz) are not: a short run may merge two of them on another CPU."""
    rng = np.random.default_rng(0)
    colours = np.array([[(k >> bit) & 1 for bit in range(3)] for k in range(8)]) * 160 + 48
    arrays = {}
    for split, count in zip(("train", "val", "test"), n):
        labels = np.arange(count) % 8
        noisy = colours[labels][:, None, None, :] + rng.normal(0, 24, (count, 28, 28, 3))
        arrays[f"{split}_images"] = np.clip(noisy, 0, 255).astype(np.uint8)
        arrays[f"{split}_labels"] = labels.reshape(-1, 1).astype(np.uint8)
    np.savez(path, **arrays)
    return arrays


@pytest.mark.slow
def test_int8_quantizes_the_network_and_keeps_its_accuracy(tmp_path):
    """Calibrated on the training split named by the version's config; the network is
    int8, the preparation before it exact, the predictions those of the SavedModel."""
    root = tmp_path / "data"
    root.mkdir()
    arrays = colour_corner_npz(root / "bloodmnist.npz")
    config = Config.model_validate(
        {
            "name": "int8",
            "data": {"name": "bloodmnist", "root": str(root), "download": False},
            "model": {"name": "resnet", "widths": [8, 16], "blocks_per_stage": 1, "dropout": 0.0},
            "output": {"publish_dir": str(tmp_path / "sm")},
        }
    )
    keras.utils.set_random_seed(0)
    model = build_model(config.model, (28, 28, 3), 8)
    model.compile(keras.optimizers.Adam(0.01), "sparse_categorical_crossentropy")
    model.fit(arrays["train_images"].astype("float32"), arrays["train_labels"], epochs=10, verbose=0)
    version = publish_model(with_tta(model, "d4"), config, list(CLASS_NAMES), {})

    path = export_edge(version, "litert", "int8", representative=64)
    assert path == version / "edge" / "model_int8.tflite"
    ops = op_dtypes(path)
    assert {dtype for name, dtype in ops if name in ("CONV_2D", "FULLY_CONNECTED", "MAX_POOL_2D", "SOFTMAX")} == {
        np.int8
    }
    assert ops[-1] == ("DEQUANTIZE", np.float32)  # float probabilities out
    images, labels = arrays["test_images"], arrays["test_labels"].ravel()
    served = predict(saved_model_predictor(load_version(version)), images)
    quantized = predict(load_edge_model(path), images)
    assert (served.argmax(1) == labels).mean() > 0.9  # a model worth quantizing
    assert (quantized.argmax(1) == labels).mean() >= (served.argmax(1) == labels).mean() - 0.005
    assert np.abs(quantized - served).max() < 0.1


@pytest.mark.slow
def test_the_preparation_stays_out_of_quantization(kaggle_like):
    float_model = edge_module.convert_litert(kaggle_like)
    names = edge_module.preparation_nodes(float_model)
    # The HSV fixed-point division, the cell search and the blur: all before the network.
    assert any(name.startswith("truediv") for name in names) and any("MirrorPad" in name for name in names)
    assert not any("conv2d" in name.lower() and "/" in name for name in names)  # no layer of the network


# ----------------------------------------------------------------------------- bad input


def run(capsys, *argv):
    status = run_main(edge_command.main, [str(a) for a in argv])
    return status, capsys.readouterr().err.strip().splitlines()


def test_bad_input_is_one_line_and_exit_2(kaggle_like, tmp_path, capsys):
    cases = {
        (tmp_path, "--format", "litert"): "is not a published model version",
        (kaggle_like, "--format", "coreml"): "--format 'coreml': choose one of litert, onnx",
        (kaggle_like, "--format", "onnx", "--quantize", "int8"): "only --quantize int8 with --format litert",
        (kaggle_like, "--format", "litert", "--quantize", "int4"): "--quantize 'int4'",
    }
    for argv, expected in cases.items():
        status, err = run(capsys, *argv)
        assert status == 2 and len(err) == 1 and expected in err[0], (argv, err)


def test_a_damaged_version_and_missing_data_are_one_line(kaggle_like, tmp_path, capsys):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(kaggle_like, broken, ignore=shutil.ignore_patterns("edge"))
    (broken / "saved_model.pb").write_bytes(b"\0garbage")
    status, err = run(capsys, broken, "--format", "litert")
    assert status == 2 and len(err) == 1 and "publish a new one" in err[0]
    status, err = run(
        capsys, kaggle_like, "--format", "litert", "--quantize", "int8", "--set", f"data.root={tmp_path / 'nowhere'}"
    )
    assert status == 2 and len(err) == 1 and "nowhere" in err[0]
    assert not (broken / "edge").exists()


def test_a_graph_that_does_not_convert_names_the_op_and_the_fix(tmp_path, capsys, monkeypatch):
    """A version exported before the preparation was convertible: its antialiased resize
    (ScaleAndTranslate) converts to neither format."""
    from keras_blood.serving import export as export_module

    def old_preprocess(data):
        return lambda images: tf.cast(tf.image.resize(images, (28, 28), antialias=True), tf.uint8)

    monkeypatch.setattr(export_module, "make_preprocess", old_preprocess)
    version = export(
        tmp_path, {"name": "bloodmnist"}, {"name": "basic", "filters": [4, 4, 4], "dense_units": 8}, (28, 28, 3), 8
    )
    for fmt in ("litert", "onnx"):
        status, err = run(capsys, version, "--format", fmt)
        assert status == 2 and len(err) == 1, err
        assert "ScaleAndTranslate" in err[0] and "train its config again" in err[0]
    assert not (version / "edge").exists()


def test_a_failed_check_writes_nothing(kaggle_like, monkeypatch, capsys):
    target = edge_file(kaggle_like, "onnx")
    if not target.is_file():
        export_edge(kaggle_like, "onnx")
    before = target.read_bytes()
    monkeypatch.setattr(edge_module, "FLOAT_TOLERANCE", -1.0)  # no model can pass
    status, err = run(capsys, kaggle_like, "--format", "onnx")
    assert status == 2 and len(err) == 1 and "differs from the SavedModel" in err[0]
    assert target.read_bytes() == before  # the earlier file stays
    assert not list((kaggle_like / "edge").glob(".tmp-*"))


def test_a_missing_runtime_says_how_to_install_it(kaggle_like, monkeypatch, capsys):
    real = importlib.import_module

    def without_tf2onnx(name, *args):
        if name == "tf2onnx":
            raise ImportError(name)
        return real(name, *args)

    monkeypatch.setattr(importlib, "import_module", without_tf2onnx)
    status, err = run(capsys, kaggle_like, "--format", "onnx")
    assert status == 2 and err == [
        'error: --format onnx needs tf2onnx, which is not installed: pip install "keras-blood[edge]"'
    ]
