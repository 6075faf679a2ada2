"""The serving_fields signature (keras_blood/serving/fields_signature.py): a smear field in,
its white cells' boxes and classes out, loaded in another process as a model server loads
it, against the finder and what the ``count`` command writes for the same field."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2

from keras_blood.config.schema import Config
from keras_blood.models.registry import build_model
from keras_blood.preparation.decode import decode_file
from keras_blood.preparation.finder import CellBox, FinderConfig, find_cells
from keras_blood.serving.capture_window import cut_window, median_colour
from keras_blood.serving.count import capture_window
from keras_blood.serving.export import publish_model
from keras_blood.serving.fields_signature import FIELDS_RECORD, FIELDS_SIGNATURE, fields_record
from tests.helpers import encode

CLASSES = ["neutrophil", "lymphocyte", "monocyte", "eosinophil"]
MAX_PIXELS = 400_000  # above a 640x480 field, below the 700x700 image of the oversized test


def smear(white=(), platelets=(), height=480, width=640, diameter=48) -> np.ndarray:
    """A uint8 RGB field: pink red cells (``diameter``, a pale centre) on a grid, around the
    white cells ``(x, y, cell radius, nucleus radius)``, and purple ``platelets`` (x, y)."""
    import cv2

    field = np.full((height, width, 3), (232, 226, 236), np.uint8)
    step = int(diameter * 1.15)
    for y in range(diameter // 2, height, step):
        for x in range(diameter // 2, width, step):
            if any((x - x0) ** 2 + (y - y0) ** 2 < (r0 + diameter // 2 + 4) ** 2 for x0, y0, r0, _ in white):
                continue
            cv2.circle(field, (x, y), diameter // 2, (222, 160, 160), -1)
            cv2.circle(field, (x, y), diameter // 6, (230, 200, 205), -1)
    for x, y, radius, nucleus in white:
        cv2.circle(field, (x, y), radius, (200, 190, 225), -1)  # cytoplasm
        cv2.circle(field, (x, y), nucleus, (110, 70, 170), -1)  # the stain the finder looks for
    for x, y in platelets:
        cv2.circle(field, (x, y), 4, (110, 70, 170), -1)
    return cv2.GaussianBlur(field, (5, 5), 1.0)


def tiny_config(root, cell_crop=True) -> Config:
    data = {"name": "image_folder", "image_size": [60, 80], "classes": CLASSES, "max_pixels": MAX_PIXELS}
    if cell_crop:
        data["cell_crop"] = {"fit": "extent", "size": 16}
    return Config.model_validate(
        {
            "name": "fields" if cell_crop else "nocrop",
            "data": data,
            "model": {"name": "basic", "filters": [4, 4, 4], "dense_units": 8},
            "output": {"publish_dir": str(root)},
        }
    )


@pytest.fixture(scope="module")
def version(tmp_path_factory):
    """An untrained tiny white-cell model with an in-graph extent cell crop at a 3:4 input
    (as tests/commands/test_count.py publishes it), and a data.max_pixels of MAX_PIXELS."""
    keras.utils.set_random_seed(0)
    model = build_model(tiny_config("").model, (16, 16, 3), len(CLASSES))
    return publish_model(model, tiny_config(tmp_path_factory.mktemp("publish")), CLASSES, {})


# A model server's view: a process that imports TensorFlow alone and loads the version from
# its files. A request a line (version, signature, input file, output .npz, "batch" or
# "scalar"); the answer a line that starts "served: ".
FIELDS_SERVER = """
import sys
import numpy as np
import tensorflow as tf
for request in sys.stdin:
    version, name, data, out, shape = request.rstrip("\\n").split("\\t")
    try:
        signature = tf.saved_model.load(version).signatures[name]
        data = open(data, "rb").read()
        if name == "serving_fields":
            answer = signature(field=tf.constant([data] if shape == "batch" else data))
        else:
            answer = signature(images=tf.constant([data]))
        np.savez(out, **{k: v.numpy().astype("U") if v.dtype == tf.string else v.numpy() for k, v in answer.items()})
        print("served: ok", flush=True)
    except Exception as exc:
        line = str(getattr(exc, "message", exc)).replace("\\n", " ")
        print(f"served: {type(exc).__name__}\\t{line}", flush=True)
"""


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """served(version, data, signature="serving_fields", shape="scalar") -> the outputs as
    numpy arrays, or ``(error type, message)``: computed in one child process for the module."""
    import itertools

    workdir = tmp_path_factory.mktemp("fields-server")
    server = subprocess.Popen(
        [sys.executable, "-c", FIELDS_SERVER], cwd=workdir, text=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    numbers = itertools.count()

    def serve(version, data: bytes, signature: str = FIELDS_SIGNATURE, shape: str = "scalar"):
        number = next(numbers)
        request, out = workdir / f"field-{number}", workdir / f"served-{number}.npz"
        request.write_bytes(data)
        server.stdin.write(f"{version}\t{signature}\t{request}\t{out}\t{shape}\n")
        server.stdin.flush()
        answer = ""
        while not answer.startswith("served: "):
            answer = server.stdout.readline()
            assert answer, f"the fields server exited ({server.poll()})"
        answer = answer.strip().removeprefix("served: ")
        if answer != "ok":
            kind, message = answer.split("\t", 1)
            return kind, message
        with np.load(out) as arrays:
            return dict(arrays)

    yield serve
    server.stdin.close()
    server.kill()  # idle, with nothing to write: TensorFlow's own exit would take seconds
    server.wait(timeout=60)


def count_rows(command, version, path, tmp_path) -> list[dict[str, str]]:
    """cells.csv of ``python -m keras_blood.count VERSION PATH``."""
    out = tmp_path / "count"
    result = command("keras_blood.count", str(version), str(path), "--output", str(out))
    assert result.returncode == 0, result.stderr
    with open(out / "cells.csv", newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def assert_like_the_finder_and_count(answer, data: bytes, rows: list[dict[str, str]]) -> None:
    """The signature's boxes are find_cells' on the decoded pixels; its classes and
    probabilities are count's cells.csv's; empty slots hold nothing."""
    valid = answer["valid"]
    slots = FinderConfig().max_cells
    assert answer["boxes"].shape == (slots, 4) and answer["probabilities"].shape == (slots, len(CLASSES))
    assert valid.tolist() == sorted(valid.tolist(), reverse=True)  # the cells first
    cells = find_cells(decode_file(data).numpy())
    corners = [(cell.xmin, cell.ymin, cell.xmax, cell.ymax) for cell in cells]
    assert [tuple(box) for box in answer["boxes"][valid].tolist()] == corners
    assert answer["edge"][valid].tolist() == [cell.edge for cell in cells]
    assert [(int(r["xmin"]), int(r["ymin"]), int(r["xmax"]), int(r["ymax"])) for r in rows] == corners
    counted = np.array([[float(row[name]) for name in CLASSES] for row in rows]).reshape(-1, len(CLASSES))
    np.testing.assert_allclose(answer["probabilities"][valid], counted, atol=1e-5)
    assert answer["classes"][valid].tolist() == [row["label"] for row in rows]
    assert not answer["probabilities"][~valid].any() and set(answer["classes"][~valid]) <= {""}
    assert not answer["edge"][~valid].any()


@pytest.mark.slow
def test_a_drawn_cell_is_found_and_classified_as_count_does_it(version, served, command, tmp_path):
    field = smear(white=[(320, 240, 45, 32)])
    data = encode(field, "PNG")
    (tmp_path / "fields").mkdir()
    (tmp_path / "fields" / "drawn.png").write_bytes(data)
    rows = count_rows(command, version, tmp_path / "fields" / "drawn.png", tmp_path)
    answer = served(version, data)
    assert answer["valid"].sum() == 1, "the drawn white cell was not found"
    assert_like_the_finder_and_count(answer, data, rows)
    batch = served(version, data, shape="batch")  # a batch of one, as TF Serving's "instances" send it
    for key, value in answer.items():
        np.testing.assert_array_equal(batch[key], value)


@pytest.mark.slow
def test_a_field_without_a_white_cell_gives_no_valid_box(version, served):
    data = encode(smear(platelets=[(100, 100), (400, 300)]), "PNG")
    answer = served(version, data)
    assert not answer["valid"].any() and not answer["probabilities"].any()
    assert set(answer["classes"]) == {""} and find_cells(decode_file(data).numpy()) == []


@pytest.mark.slow
def test_corrupt_oversized_and_batched_inputs_fail_as_serving_bytes_does(version, served):
    png = encode(np.full((40, 60, 3), 200, np.uint8), "PNG")
    oversized = encode(np.full((700, 700, 3), 200, np.uint8), "PNG")  # 490,000 pixels
    for data, says in [
        (png[:60], None),
        (b"not an image at all", "Unknown image file format"),
        (oversized, f"image of 490000 pixels, more than the limit of {MAX_PIXELS}; not decoded"),
    ]:
        kind, message = served(version, data)
        bytes_kind, bytes_message = served(version, data, signature="serving_bytes")
        assert kind == bytes_kind == "InvalidArgumentError"
        if says:
            assert says in message and says in bytes_message
    kind, message = served(version, b"", shape="batch")  # a batch of one empty file
    assert kind == "InvalidArgumentError"


@pytest.mark.slow  # publishes a version (the module's, if no test did before)
def test_two_fields_in_one_call_are_refused_with_a_line_saying_so(version):
    signature = tf.saved_model.load(str(version)).signatures[FIELDS_SIGNATURE]
    data = encode(np.full((40, 60, 3), 200, np.uint8), "PNG")
    with pytest.raises(tf.errors.InvalidArgumentError, match="serving_fields takes one encoded field a call"):
        signature(field=tf.constant([data, data]))


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.parametrize("name", ["BloodImage_00000.jpg", "BloodImage_00003.jpg"])
def test_a_real_bccd_field_gives_counts_cells(version, served, command, bccd_fields, tmp_path, name):
    data = (bccd_fields / name).read_bytes()
    rows = count_rows(command, version, bccd_fields / name, tmp_path)
    answer = served(version, data)
    assert answer["valid"].any(), f"the finder found no white cell in {name}"
    assert_like_the_finder_and_count(answer, data, rows)


def signatures_of(version) -> dict:
    """The SavedModel's signature_defs, read from saved_model.pb without loading it."""
    saved_model = saved_model_pb2.SavedModel.FromString((version / "saved_model.pb").read_bytes())
    return dict(saved_model.meta_graphs[0].signature_def)


@pytest.mark.slow  # publishes a version (the module's, if no test did before)
def test_only_versions_with_a_cell_crop_serve_fields_and_record_the_finder(version, tmp_path):
    signature = signatures_of(version)[FIELDS_SIGNATURE]
    assert set(signature.inputs) == {"field"}
    assert set(signature.outputs) == {"boxes", "valid", "edge", "classes", "probabilities"}
    recorded = json.loads((version / "assets.extra" / FIELDS_RECORD).read_text())
    assert recorded == json.loads(json.dumps(fields_record()))
    assert recorded["finder"]["max_cells"] == FinderConfig().max_cells and recorded["cell_fraction"] == 0.4
    keras.utils.set_random_seed(0)
    model = build_model(tiny_config("").model, (60, 80, 3), len(CLASSES))
    plain = publish_model(model, tiny_config(tmp_path, cell_crop=False), CLASSES, {})
    assert FIELDS_SIGNATURE not in signatures_of(plain) and "serving_bytes" in signatures_of(plain)
    assert not (plain / "assets.extra" / FIELDS_RECORD).exists()


# ----------------------------------------------------------------------------- the window


def former_window(image, box, frame, cell_fraction, fill):
    """The window as count cut it in numpy before the cut moved into TensorFlow ops."""
    side = max(box.xmax - box.xmin + 1, box.ymax - box.ymin + 1) / cell_fraction
    if frame[0] <= frame[1]:
        height, width = max(1, round(side)), max(1, round(side * frame[1] / frame[0]))
    else:
        height, width = max(1, round(side * frame[0] / frame[1])), max(1, round(side))
    top = math.floor((box.ymin + box.ymax) / 2 - (height - 1) / 2 + 0.5)
    left = math.floor((box.xmin + box.xmax) / 2 - (width - 1) / 2 + 0.5)
    window = np.empty((height, width, 3), np.uint8)
    window[:] = fill
    rows = slice(max(top, 0), min(top + height, image.shape[0]))
    cols = slice(max(left, 0), min(left + width, image.shape[1]))
    inside = image[rows, cols]
    if inside.size:
        window[rows.start - top : rows.stop - top, cols.start - left : cols.stop - left] = inside
    return window


def test_the_tensorflow_window_is_the_one_count_cut_before():
    rng = np.random.default_rng(0)
    # Frames of either orientation; (78, 115) at a fraction of 1 puts a 39-pixel box's window
    # at 57.5 pixels wide, which rounds to even (58) as Python's round does.
    frames = [(60, 80), (80, 60), (28, 28), (78, 115)]
    for i in range(40):
        height, width = (int(v) for v in rng.integers(5, 120, 2))
        image = rng.integers(0, 256, (height, width, 3)).astype(np.uint8)
        x0, x1 = sorted(int(v) for v in rng.integers(0, width, 2))
        y0, y1 = sorted(int(v) for v in rng.integers(0, height, 2))
        frame, fraction = frames[i % 4], (0.4, 1.0)[i % 2]
        if i == 3:
            x0, y0, x1, y1 = 0, 0, 38, min(12, height - 1)
            image = rng.integers(0, 256, (max(height, 13), max(width, 39), 3)).astype(np.uint8)
        box = CellBox(x0, y0, x1, y1, False, 1.0)
        fill = np.round(np.median(image.reshape(-1, 3), axis=0)).astype(np.uint8)
        expected = former_window(image, box, frame, fraction, fill)
        if max(expected.shape) > 2048:  # cut at a coarser scale: TensorFlow's area resize, not OpenCV's
            continue
        np.testing.assert_array_equal(capture_window(image, box, frame, fraction), expected)
        got = cut_window(image, tf.constant([x0, y0, x1, y1]), frame, fraction, fill).numpy()
        np.testing.assert_array_equal(got, expected)
    for shape in [(1, 1, 3), (2, 1, 3), (3, 4, 3), (48, 64, 3)]:  # odd and even pixel counts
        image = rng.integers(0, 256, shape).astype(np.uint8)
        expected = np.round(np.median(image.reshape(-1, 3), axis=0))
        np.testing.assert_array_equal(median_colour(image).numpy(), expected)
