"""Data-layer faults: one decode rule for real files, and a pixel cap wherever an image is decoded

BMPs a few bytes longer than their header says (as some capture programs write them), a
colour-palette BMP and a 1-bit BMP: read as OpenCV and Pillow read them, the same way in
training (image_folder preparation), ``predict``, ``evaluate --data`` and, where the graph
can, ``serving_bytes``. A PNG whose header says 20000x20000 pixels: refused from its header
in training, ``evaluate --data`` and ``serving_bytes`` (``data.max_pixels``, ``--max-pixels``).
``evaluate --data`` honours ``data.skip_unreadable`` and says which split folders it pooled.
"""

from __future__ import annotations

import csv
import io
import json
import os
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import numpy as np
import pytest

from keras_blood.errors import DataError
from tests.helpers import (
    REPO,
    SHARED_DATA,
    capture_from,
    command_lines,
    encode,
    lab_folder,
    marked_npz,
)

ANDRADE = SHARED_DATA / "labs" / "leukocytes_andrade"
LAB_CLASSES = ["eosinophil", "lymphocyte", "neutrophil"]  # tests.helpers.lab_folder's


def pillow_pixels(data: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


def opencv_pixels(data: bytes) -> np.ndarray | None:
    import cv2

    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    return None if image is None else image[..., ::-1]


def opencv_bmp(pixels: np.ndarray) -> bytes:
    import cv2

    return cv2.imencode(".bmp", np.ascontiguousarray(pixels[..., ::-1]))[1].tobytes()


def with_file_size(data: bytes, size: int) -> bytes:
    """``data`` with the BMP file header's bfSize set to ``size``."""
    return data[:2] + struct.pack("<I", size) + data[6:]


# What capture programs write: the pixels, then a few bytes that no header field counts.
LONG_BMPS = {
    "pillow, 2 zero bytes appended": lambda p: encode(p, "BMP") + b"\0\0",
    "pillow, 6 zero bytes appended": lambda p: encode(p, "BMP") + b"\0" * 6,
    "opencv, 4 zero bytes appended": lambda p: opencv_bmp(p) + b"\0" * 4,
    "bfSize 3 short of the file": lambda p: with_file_size(encode(p, "BMP") + b"\0\0\0", len(encode(p, "BMP"))),
}


def png_of(width: int, height: int) -> bytes:
    """A real 1-bit grey PNG of ``width`` x ``height`` black pixels, written row by row
    (20000x20000 is 50 MB of rows, a few tens of KB compressed; never held whole)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    compress = zlib.compressobj(9)
    row = b"\0" * (1 + (width + 7) // 8)  # filter byte, then 8 pixels a byte
    data = b"".join(compress.compress(row) for _ in range(height)) + compress.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def in_graph(data: bytes) -> np.ndarray:
    """The decode ``serving_bytes`` runs, traced as in the SavedModel (no eager shortcuts)."""
    import tensorflow as tf

    from keras_blood.preparation.decode import decode

    return tf.function(decode, input_signature=[tf.TensorSpec([], tf.string)])(tf.constant(data)).numpy()


def image_folder_config(root: Path, tfds_dir: Path, **changes):
    from keras_blood.config.schema import DataConfig

    return DataConfig(name="image_folder", root=root, tfds_dir=tfds_dir, image_size=16, **changes)


# ----------------------------------------------------------------------------- one rule for BMPs


@pytest.mark.parametrize("make", LONG_BMPS.values(), ids=LONG_BMPS.keys())
def test_a_bmp_longer_than_its_header_says_reads_as_opencv_and_pillow_read_it(make, tmp_path):
    from keras_blood.data.builder_info import unreadable
    from keras_blood.preparation.decode import Preparation, decode_file
    from keras_blood.serving.predict import prepared_files

    pixels = np.random.default_rng(0).integers(0, 256, (7, 5, 3)).astype(np.uint8)  # rows padded to 4 bytes
    data = make(pixels)
    np.testing.assert_array_equal(pillow_pixels(data), pixels)
    np.testing.assert_array_equal(opencv_pixels(data), pixels)
    np.testing.assert_array_equal(decode_file(data).numpy(), pixels)  # training's conversion, predict's fallback
    np.testing.assert_array_equal(in_graph(data), pixels)  # serving_bytes
    (tmp_path / "long.bmp").write_bytes(data)
    assert unreadable([str(tmp_path / "long.bmp")]) == []  # what image_folder preparation keeps
    [(prepared, error)] = prepared_files([(str(tmp_path / "long.bmp"), "")], Preparation((5, 7), method="nearest"))
    assert error == "" and prepared.shape == (5, 7, 3)  # predict's and evaluate --data's pipeline


def test_a_bmp_cut_short_is_still_corrupt():
    from keras_blood.preparation.decode import decode_file

    data = encode(np.zeros((7, 5, 3), np.uint8), "BMP")[:-2]
    with pytest.raises(ValueError, match="corrupt or truncated image"):
        decode_file(data)


def test_bmps_tensorflow_misreads_or_refuses_read_as_pillow_reads_them():
    """An 8-bit colour-palette BMP: TensorFlow returns the palette indices as grey. A 1-bit
    BMP: TensorFlow refuses it; it is read through OpenCV, as TIFF is, outside the graph."""
    from PIL import Image

    from keras_blood.preparation.decode import decode_file

    rng = np.random.default_rng(1)
    colours = Image.fromarray(rng.integers(0, 256, (9, 11, 3)).astype(np.uint8)).quantize(16)
    buffer = io.BytesIO()
    colours.save(buffer, format="BMP")
    palette = buffer.getvalue()
    expected = pillow_pixels(palette)
    np.testing.assert_array_equal(opencv_pixels(palette), expected)
    np.testing.assert_array_equal(decode_file(palette).numpy(), expected)
    np.testing.assert_array_equal(in_graph(palette), expected)
    np.testing.assert_array_equal(in_graph(palette + b"\0\0"), expected)
    one_bit = encode(rng.integers(0, 2, (13, 10)).astype(bool), "BMP")
    np.testing.assert_array_equal(decode_file(one_bit).numpy(), pillow_pixels(one_bit))


def test_a_lab_folder_of_long_bmps_trains_as_the_same_pixels_in_png(tmp_path):
    from keras_blood.data import load_data

    rng = np.random.default_rng(2)
    for label in LAB_CLASSES:
        for i in range(6):
            pixels = rng.integers(0, 256, (30 + i, 27, 3)).astype(np.uint8)  # rows of 81 bytes, padded to 84
            for kind, data in (("bmp", encode(pixels, "BMP") + b"\0\0"), ("png", encode(pixels, "PNG"))):
                path = tmp_path / kind / label / f"slide{i}_{i}.{kind}"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
    long_bmps = load_data(image_folder_config(tmp_path / "bmp", tmp_path / "tfds"))
    pngs = load_data(image_folder_config(tmp_path / "png", tmp_path / "tfds"))
    for name, split in long_bmps.splits.items():
        np.testing.assert_array_equal(split.images, pngs.splits[name].images)
        np.testing.assert_array_equal(split.labels, pngs.splits[name].labels)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small network trained on marked_npz (class k: a bright square of side 2k + 2) and
    exported with BloodMNIST's recipe: the cheapest version that has learnt something."""
    from keras_blood.config.schema import Config
    from keras_blood.training.trainer import train

    root = tmp_path_factory.mktemp("trained")
    (root / "data").mkdir()
    arrays = marked_npz(root / "data" / "bloodmnist.npz")
    config = Config.model_validate(
        {
            "name": "marked",
            "model": {"name": "fnn", "hidden_units": 32},
            "data": {"root": str(root / "data"), "download": False},
            "train": {"epochs": 6, "batch_size": 16, "learning_rate": 0.003, "early_stopping_patience": 0},
            "output": {"runs_dir": str(root / "runs"), "publish_dir": str(root / "saved_models")},
        }
    )
    return train(config).export_dir, arrays


@pytest.mark.slow
def test_predict_and_serving_bytes_give_a_long_bmp_the_class_of_its_png(trained, command, tmp_path):
    import tensorflow as tf

    version, arrays = trained
    images, labels = arrays["test_images"][:8], arrays["test_labels"][:8, 0]
    names = []
    for i, small in enumerate(images):
        capture = capture_from(small, seed=i)  # the raw capture the 28x28 image is the recipe of
        (tmp_path / f"{i}.png").write_bytes(encode(capture, "PNG"))
        (tmp_path / f"{i}.bmp").write_bytes(encode(capture, "BMP") + b"\0" * (2 + i % 5))
        names += [f"{i}.png", f"{i}.bmp"]
    result = command("keras_blood.predict", str(version), *names, "--output", "p.csv")
    assert result.returncode == 0, result.stdout + result.stderr
    with open(tmp_path / "p.csv", newline="") as f:
        rows = {Path(row["path"]).name: row for row in csv.DictReader(f)}
    for i in range(len(images)):
        assert rows[f"{i}.bmp"]["error"] == ""
        assert rows[f"{i}.bmp"]["label"] == rows[f"{i}.png"]["label"]
        assert rows[f"{i}.bmp"]["probability"] == rows[f"{i}.png"]["probability"]
    classes = json.loads((version / "assets.extra" / "class_names.json").read_text())
    assert np.mean([rows[f"{i}.png"]["label"] == classes[label] for i, label in enumerate(labels)]) >= 0.75
    serve = tf.saved_model.load(str(version)).signatures["serving_bytes"]
    served = serve(images=tf.constant([(tmp_path / name).read_bytes() for name in names]))["probabilities"].numpy()
    np.testing.assert_array_equal(served[1::2], served[0::2])  # each long BMP as its PNG
    assert [classes[k] for k in served[1::2].argmax(1)] == [rows[f"{i}.bmp"]["label"] for i in range(len(images))]


@pytest.fixture
def andrade() -> Path:
    if not (ANDRADE / "labels.tsv").is_file():
        pytest.skip(f"the real leukocytes_andrade BMPs are not at {ANDRADE}")
    return ANDRADE


@pytest.mark.e2e
@pytest.mark.slow
def test_the_real_andrade_bmps_read_in_training_and_predict(andrade, tmp_path):
    """132 real 24-bit BMPs (190x190 to 610x585): each file exactly as long as its header
    says, so TensorFlow read them before too; they must still read everywhere."""
    from keras_blood.data import load_data
    from keras_blood.data.builder_info import unreadable
    from keras_blood.preparation.decode import Preparation
    from keras_blood.serving.predict import prepared_files

    paths = sorted(str(p) for p in andrade.glob("*.bmp"))
    assert len(paths) == 132
    for path in paths:
        data = Path(path).read_bytes()
        offset, width, height, bits = struct.unpack("<10xI4xii2xH", data[:30])
        assert (bits, len(data)) == (24, offset + (width * 3 + 3) // 4 * 4 * abs(height)), path
    assert unreadable(paths) == []
    prepared = list(prepared_files([(p, "") for p in paths], Preparation((28, 28))))
    assert [error for _, error in prepared] == [""] * 132
    data = load_data(image_folder_config(andrade / "labels.tsv", tmp_path / "tfds"))
    assert sum(len(split) for split in data.splits.values()) == 132


# ----------------------------------------------------------------------------- pixel caps


def test_data_max_pixels_is_a_key_whose_default_is_the_serving_cap(tmp_path):
    from keras_blood.config.schema import DataConfig
    from keras_blood.data import load_data
    from keras_blood.preparation.decode import MAX_PIXELS

    assert DataConfig().max_pixels == MAX_PIXELS
    assert DataConfig.model_fields["max_pixels"].description
    several = DataConfig(
        classes=["a", "b"], sources={"ours": {"name": "image_folder", "root": str(tmp_path)}}, max_pixels=9
    )
    assert several.source_config("ours").max_pixels == 9  # data.sources: each lab's folder under the one cap
    root = lab_folder(tmp_path / "lab", per_class=10)
    with pytest.raises(DataError) as info:
        load_data(image_folder_config(root, tmp_path / "tfds", max_pixels=2000))
    message = str(info.value)
    assert "\n" not in message and "more than the limit of 2000" in message and "data.max_pixels" in message
    assert "pixels" in message and str(root) in message


def test_a_20000_pixel_square_png_in_a_lab_folder_is_named_before_it_is_decoded(tmp_path, capsys):
    from keras_blood.data import load_data

    root = lab_folder(tmp_path / "lab", per_class=10)
    huge = root / "neutrophil" / "huge.png"
    huge.write_bytes(png_of(20_000, 20_000))
    assert huge.stat().st_size < 200_000
    with pytest.raises(DataError) as info:
        load_data(image_folder_config(root, tmp_path / "tfds"))
    assert str(info.value) == (
        f"{huge}: not a readable image (image of 400000000 pixels, more than the limit of 50000000 "
        "(--set data.max_pixels=N raises it); not decoded); 1 such file(s) in all. Remove them or set "
        "data.skip_unreadable: true"
    )
    data = load_data(image_folder_config(root, tmp_path / "tfds", skip_unreadable=True))
    assert sum(len(split) for split in data.splits.values()) == 30
    assert "skipped 1 of 31 files that are not readable images (e.g. huge.png)" in capsys.readouterr().err


@pytest.mark.slow
def test_preparing_a_lab_folder_with_a_20000_pixel_square_png_takes_little_memory(tmp_path):
    """Measured in processes of their own, against the same folder without it: decoding it
    would add 1.2 GB for its RGB pixels alone."""
    root = lab_folder(tmp_path / "lab", per_class=10)
    code = """
        import resource, sys
        from keras_blood.config.schema import DataConfig
        from keras_blood.config.cli import run_main
        from keras_blood.data import load_data
        config = DataConfig(name="image_folder", root=sys.argv[1], tfds_dir=sys.argv[2], image_size=16)
        status = run_main(lambda argv: load_data(config))
        print("peak_mb", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "exit", status)
    """

    def prepared(tfds: str) -> tuple[float, subprocess.CompletedProcess]:
        proc = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(code), str(root), str(tmp_path / tfds)],
            cwd=tmp_path,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        return float(proc.stdout.split("peak_mb")[1].split()[0]), proc

    without, _ = prepared("tfds-without")
    (root / "neutrophil" / "huge.png").write_bytes(png_of(20_000, 20_000))
    peak, proc = prepared("tfds")
    assert "exit 2" in proc.stdout and "more than the limit of 50000000" in proc.stderr, (
        proc.stdout + proc.stderr[-2000:]
    )
    assert peak < without + 600, (peak, without)


def test_serving_bytes_refuses_an_image_over_data_max_pixels_from_its_header(tmp_path):
    import keras
    import tensorflow as tf

    from keras_blood.config.schema import Config
    from keras_blood.models.registry import build_model
    from keras_blood.serving.export import publish_model

    config = Config.model_validate(
        {
            "name": "capped",
            "model": {"name": "basic", "filters": [4, 4, 4], "dense_units": 8},
            "data": {"max_pixels": 1000},
            "output": {"publish_dir": str(tmp_path)},
        }
    )
    keras.utils.set_random_seed(0)
    version = publish_model(build_model(config.model, (28, 28, 3), 8), config, list("abcdefgh"), {})
    serve = tf.saved_model.load(str(version)).signatures["serving_bytes"]
    small = np.zeros((25, 40, 3), np.uint8)  # 1000 pixels: at the limit
    for fmt in ("PNG", "JPEG", "GIF", "BMP"):
        assert serve(images=tf.constant([encode(small, fmt)]))["probabilities"].shape == (1, 8)
    large = np.zeros((25, 41, 3), np.uint8)
    for fmt in ("PNG", "JPEG", "GIF", "BMP"):
        with pytest.raises(tf.errors.InvalidArgumentError, match="image of 1025 pixels, more than the limit of 1000"):
            serve(images=tf.constant([encode(large, fmt)]))
    with pytest.raises(tf.errors.InvalidArgumentError, match="image of 400000000 pixels, more than the limit of 1000"):
        serve(images=tf.constant([png_of(20_000, 20_000)]))
    one_bit = encode(np.zeros((10, 10), bool), "BMP")
    with pytest.raises(tf.errors.InvalidArgumentError, match="a BMP of 1 bits a pixel.*re-save it as PNG"):
        serve(images=tf.constant([one_bit]))


# ----------------------------------------------------------------------------- evaluate --data


@pytest.fixture(scope="module")
def lab_version(tmp_path_factory):
    """An (untrained) tiny model of tests.helpers.lab_folder's three classes, exported."""
    import keras

    from keras_blood.config.schema import Config
    from keras_blood.models.registry import build_model
    from keras_blood.serving.export import publish_model

    root = tmp_path_factory.mktemp("lab-version")
    config = Config.model_validate(
        {
            "name": "lab",
            "model": {"name": "basic", "filters": [4, 4, 4], "dense_units": 8},
            "output": {"publish_dir": str(root)},
        }
    )
    keras.utils.set_random_seed(0)
    return publish_model(build_model(config.model, (28, 28, 3), 3), config, LAB_CLASSES, {}, {"resize": [28, 28]})


def evaluate_data(command, version: Path, root: Path, *args: str):
    return command("keras_blood.evaluate", str(version), "--data", str(root), "--output", "reports", *args)


def report_of(result) -> dict:
    return json.loads((Path(result.stdout.strip().splitlines()[-1]) / "metrics.json").read_text())


@pytest.mark.slow
def test_evaluate_data_reads_long_bmps_and_names_an_unreadable_file_and_the_key(lab_version, command, tmp_path):
    root = lab_folder(tmp_path / "lab", per_class=5)
    (root / "eosinophil" / "long.bmp").write_bytes(encode(np.full((40, 30, 3), 200, np.uint8), "BMP") + b"\0\0")
    broken = root / "lymphocyte" / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    result = evaluate_data(command, lab_version, root)
    [line] = command_lines(result.stderr)
    assert result.returncode == 2 and line.startswith(f"error: {broken}: not a readable image (not an image file")
    assert line.endswith(f"; 1 such file(s) in all. Remove them from {root} or pass --set data.skip_unreadable=true")
    result = evaluate_data(command, lab_version, root, "--set", "data.skip_unreadable=true")
    assert result.returncode == 0, result.stderr
    assert "warning: skipped 1 of 17 files that are not readable images (e.g. broken.png)" in result.stderr
    report = report_of(result)
    assert report["num_examples"] == 16 and report["left_out"] == {"unreadable files": 1}


@pytest.mark.slow
def test_evaluate_data_refuses_a_20000_pixel_square_png_from_its_header(lab_version, command, tmp_path, capfd):
    root = lab_folder(tmp_path / "lab", per_class=5)
    huge = root / "neutrophil" / "huge.png"
    huge.write_bytes(png_of(20_000, 20_000))
    result = evaluate_data(command, lab_version, root)
    assert result.returncode == 2 and command_lines(result.stderr) == [
        (
            f"error: {huge}: not a readable image (image of 400000000 pixels, more than the limit of 50000000 "
            f"(--max-pixels); not decoded); 1 such file(s) in all. Remove them from {root} or pass "
            "--set data.skip_unreadable=true"
        )
    ], result.stderr
    result = evaluate_data(command, lab_version, root, "--set", "data.skip_unreadable=true")
    assert result.returncode == 0 and report_of(result)["left_out"] == {"unreadable files": 1}, result.stderr
    result = evaluate_data(command, lab_version, root, "--max-pixels", "1000")  # every 40x36 capture is over it
    assert result.returncode == 2 and "more than the limit of 1000 (--max-pixels)" in result.stderr
    with pytest.raises(SystemExit) as info:  # a usage error, from argparse
        evaluate_data(command, lab_version, root, "--max-pixels", "0")
    assert info.value.code == 2 and "--max-pixels: must be at least 1" in capfd.readouterr().err


def test_evaluate_data_on_a_train_test_root_says_which_split_folders_it_pooled(lab_version, command, tmp_path):
    root = tmp_path / "lab"
    lab_folder(root / "TRAIN", per_class=4)
    lab_folder(root / "TEST", per_class=2, seed=1)
    result = evaluate_data(command, lab_version, root)
    assert result.returncode == 0, result.stderr
    pooled = [line for line in result.stdout.splitlines() if "pooled" in line]
    assert pooled == [
        (
            f"{root} has split folders: pooled TEST/ (6 images) and TRAIN/ (12 images) into one set of 18; "
            f"to evaluate one, pass --data {root / 'TEST'}"
        )
    ]
    assert report_of(result)["pooled_split_folders"] == {"TEST": 6, "TRAIN": 12}
    result = evaluate_data(command, lab_version, root / "TEST")
    assert result.returncode == 0 and "pooled" not in result.stdout and "pooled_split_folders" not in report_of(result)
