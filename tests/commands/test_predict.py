"""python -m keras_blood.predict: files, folders, globs; any size and format; bad files per row."""

import csv
import io
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_blood.config.cli import run_main
from keras_blood.config.schema import Config
from keras_blood.data.sources.bloodmnist.builder import CLASS_NAMES
from keras_blood.models.registry import build_model
from keras_blood.predict import main
from keras_blood.preparation.decode import decode_file, preparer
from keras_blood.serving.export import publish_model
from keras_blood.serving.predict import Progress, predict, prepared_batches
from keras_blood.serving.request import expand_inputs
from tests.helpers import REPO, capture_from, command_lines, encode

CLASSES = list(CLASS_NAMES)
HEADER = ["path", "label", "probability", *CLASSES, "error"]


@pytest.fixture(scope="module")
def version(tmp_path_factory):
    """An (untrained) tiny BloodMNIST-shaped model, exported with the MedMNIST recipe."""
    root = tmp_path_factory.mktemp("export")
    config = Config.model_validate(
        {
            "name": "tiny",
            "model": {"name": "basic", "filters": [4, 4, 4], "dense_units": 8},
            "output": {"publish_dir": str(root)},
        }
    )
    keras.utils.set_random_seed(0)
    model = build_model(config.model, (28, 28, 3), 8)
    recipe = {"center_crop_fraction": 200 / 360, "resize": [28, 28], "method": "bicubic"}
    return publish_model(model, config, CLASSES, {}, recipe)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """A folder of made-up inputs: good ones of odd sizes and formats, and broken ones."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    capture = capture_from(rng.integers(0, 256, (28, 28, 3)).astype(np.uint8))
    good = {
        "capture.png": encode(capture, "PNG"),
        "capture.tiff": encode(capture, "TIFF"),  # same pixels as capture.png
        "odd.jpg": encode(rng.integers(0, 256, (97, 1203, 3)).astype(np.uint8), "JPEG"),
        "tiny.bmp": encode(rng.integers(0, 256, (3, 5, 3)).astype(np.uint8), "BMP"),
        "sub/grey.png": encode(rng.integers(0, 256, (400, 300)).astype(np.uint8), "PNG"),
        "sub/rgba.PNG": encode(rng.integers(0, 256, (64, 80, 4)).astype(np.uint8), "PNG"),
        "sub/deeper/wide.tif": encode(rng.integers(0, 256, (50, 500, 3)).astype(np.uint8), "TIFF"),
    }
    bad = {
        "truncated.jpg": encode(capture, "JPEG")[:2000],
        "sub/truncated.png": encode(capture, "PNG")[:2000],
        "sub/broken.tif": encode(capture, "TIFF")[:2000],
        "empty.png": b"",
        "notes.jpg": b"this is text, not an image\n",
    }
    for name, data in {**good, **bad}.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    (folder / "README.txt").write_text("not an image, and not picked up from a folder")
    (folder / ".hidden.png").write_bytes(b"macOS junk")
    return folder, sorted(good), sorted(bad)


def read_csv(path):
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], {row[0]: dict(zip(rows[0], row)) for row in rows[1:]}


def test_inputs_expand_folders_recursively_globs_and_missing_paths(images):
    folder, good, bad = images
    entries = expand_inputs(
        [
            str(folder),
            str(folder / "README.txt"),
            str(folder / "*.bmp"),
            str(folder / "nope.jpg"),
            str(folder / "**" / "*.zz"),
        ]
    )
    paths = [path for path, _ in entries]
    expected = {str(folder / name) for name in good + bad}
    assert set(paths[: len(expected)]) == expected  # the folder: image suffixes, not hidden files
    assert len(paths) == len(set(paths)) == len(expected) + 3  # tiny.bmp again is not repeated
    errors = dict(entries)
    assert errors[str(folder / "README.txt")] == ""  # named explicitly: tried, whatever it is
    assert errors[str(folder / "nope.jpg")] == "no such file or folder"
    assert errors[str(folder / "**" / "*.zz")] == "no file matches this pattern"
    assert [p for p, _ in expand_inputs([str(folder / "sub" / "**" / "*.tif")])] == [
        str(folder / "sub" / "broken.tif"),
        str(folder / "sub" / "deeper" / "wide.tif"),
    ]


def test_every_file_gets_a_row_and_bad_ones_their_error(version, images, tmp_path):
    folder, good, bad = images
    out = io.StringIO()
    csv_path, failed = predict(version, [str(folder)], tmp_path / "p.csv", batch_size=3, out=out)
    assert failed == len(bad)
    header, rows = read_csv(csv_path)
    assert header == HEADER
    assert list(rows) == [path for path, _ in expand_inputs([str(folder)])]  # in input order
    for name in good:
        row = rows[str(folder / name)]
        probs = np.array([float(row[c]) for c in CLASSES])
        assert row["error"] == "" and row["label"] == CLASSES[probs.argmax()]
        assert float(row["probability"]) == probs.max() and probs.sum() == pytest.approx(1, abs=1e-4)
    messages = {name: rows[str(folder / name)]["error"] for name in bad}
    expected = "not an image file (JPEG, PNG, TIFF, BMP or GIF expected)"
    assert messages["empty.png"] == messages["notes.jpg"] == expected
    for name in ("truncated.jpg", "sub/truncated.png", "sub/broken.tif"):
        assert messages[name].startswith("corrupt or truncated"), messages[name]
    assert all(rows[str(folder / name)]["label"] == "" for name in bad)
    screen = out.getvalue().splitlines()
    assert screen[0].split()[:3] == ["path", "label", "probability"]
    assert len(screen) == 1 + len(good) + len(bad) + 1
    assert screen[-1] == f"{len(good)} of {len(good) + len(bad)} files classified, {len(bad)} failed"
    # A TIFF and a PNG of the same pixels get the same answer.
    assert rows[str(folder / "capture.tiff")] | {"path": ""} == rows[str(folder / "capture.png")] | {"path": ""}


def test_predict_agrees_with_the_bytes_signature(version, images, tmp_path):
    folder, good, _ = images
    names = [n for n in good if not n.lower().endswith((".tif", ".tiff"))]  # TF cannot decode TIFF
    csv_path, failed = predict(version, [str(folder / n) for n in names], tmp_path / "p.csv", out=io.StringIO())
    assert failed == 0
    _, rows = read_csv(csv_path)
    serve = tf.saved_model.load(str(version)).signatures["serving_bytes"]
    served = serve(images=tf.constant([(folder / n).read_bytes() for n in names]))["probabilities"].numpy()
    predicted = np.array([[float(rows[str(folder / n)][c]) for c in CLASSES] for n in names])
    np.testing.assert_allclose(predicted, served, atol=1e-6)  # the CSV keeps 6 decimals


def test_the_pipeline_prepares_every_readable_file_as_the_eager_path_and_leaves_out_the_rest(version, images):
    from keras_blood.serving.version import load_version

    folder, good, bad = images
    entries = [(str(folder / name), "") for name in good + bad] + [("missing.jpg", "no such file or folder")]
    recipe = load_version(version).preparation
    batches = list(prepared_batches(entries, recipe, batch_size=3))
    indices = np.concatenate([i.numpy() for i, _ in batches])
    assert indices.tolist() == list(range(len(good)))  # TIFFs included; the bad and the missing left out
    assert [len(i) for i, _ in batches] == [3, 3, 1]
    pixels = np.concatenate([p.numpy() for _, p in batches])
    prepare = preparer(recipe)
    np.testing.assert_array_equal(pixels, [prepare(decode_file((folder / n).read_bytes())) for n in good])


def test_predict_agrees_with_the_bytes_signature_on_real_captures(version, kaggle_root, tmp_path):
    files = sorted((kaggle_root / "TEST").glob("*/*.jpeg"))[::12][:200]  # all four classes
    csv_path, failed = predict(version, [str(f) for f in files], tmp_path / "p.csv", out=io.StringIO())
    _, rows = read_csv(csv_path)
    serve = tf.saved_model.load(str(version)).signatures["serving_bytes"]
    served = serve(images=tf.constant([f.read_bytes() for f in files]))["probabilities"].numpy()
    predicted = np.array([[float(rows[str(f)][c]) for c in CLASSES] for f in files])
    assert failed == 0 and len(files) == 200
    np.testing.assert_allclose(predicted, served, atol=1e-6)


def test_batch_size_does_not_change_the_answers(version, images, tmp_path):
    folder, _, _ = images
    first, _ = predict(version, [str(folder)], tmp_path / "a.csv", batch_size=1, out=io.StringIO())
    second, _ = predict(version, [str(folder)], tmp_path / "b.csv", batch_size=64, out=io.StringIO())
    assert first.read_text() == second.read_text()


def test_progress_bar_in_logs_prints_a_line_per_tenth():
    stream = io.StringIO()
    progress = Progress(100, stream)
    for done in range(1, 101):
        progress.update(done, failed=done // 50)
    lines = stream.getvalue().splitlines()
    assert [line.split()[1] for line in lines] == ["1/100", *(f"{10 * i}/100" for i in range(1, 11))]
    assert lines[-1] == f"[{'#' * 30}] 100/100 files, 2 failed"


def test_real_kaggle_jpegs_of_another_size(version, kaggle_root, tmp_path):
    pattern = str(kaggle_root / "TEST_SIMPLE" / "*" / "_1*.jpeg")
    csv_path, failed = predict(version, [pattern], tmp_path / "k.csv", out=io.StringIO())
    _, rows = read_csv(csv_path)
    assert failed == 0 and len(rows) >= 4
    classes = {os.path.basename(os.path.dirname(p)) for p in rows}
    assert classes == {"EOSINOPHIL", "LYMPHOCYTE", "MONOCYTE", "NEUTROPHIL"}
    assert all(row["label"] in CLASSES for row in rows.values())


def test_main_returns_1_when_a_file_failed_and_0_when_none_did(version, images, tmp_path, capsys):
    folder, _, _ = images
    assert main([str(version), str(folder / "odd.jpg"), "--output", str(tmp_path / "ok.csv")]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == str(tmp_path / "ok.csv")
    both = [str(folder / "odd.jpg"), str(folder / "notes.jpg")]
    assert main([str(version), *both, "--output", str(tmp_path / "x.csv")]) == 1


@pytest.mark.slow
def test_cli_reports_bad_files_without_traceback_and_usage_errors_with_2(version, images, tmp_path):
    folder, good, bad = images
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3"}
    command = [sys.executable, "-m", "keras_blood.predict", str(version)]
    proc = subprocess.run([*command, str(folder)], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr + proc.stdout and "TIFF_Error" not in proc.stderr
    written = proc.stdout.strip().splitlines()[-1]
    assert written.startswith("predictions/tiny-v1-") and written.endswith(".csv")
    assert len(read_csv(tmp_path / written)[1]) == len(good) + len(bad)
    assert f"{len(good) + len(bad)}/{len(good) + len(bad)} files, {len(bad)} failed" in proc.stderr

    proc = subprocess.run([*command[:-1], str(tmp_path), str(folder)], capture_output=True, text=True, env=env)
    assert proc.returncode == 2 and len(command_lines(proc.stderr)) == 1
    assert "not a published model version" in proc.stderr


def test_a_file_name_that_is_not_utf8_is_classified_and_shown_escaped(version, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    jpeg = encode(np.random.default_rng(0).integers(0, 256, (40, 50, 3)).astype(np.uint8), "JPEG")
    with open(os.path.join(os.fsencode(folder), b"bad\xff.jpg"), "wb") as f:
        f.write(jpeg)
    (folder / "good.jpg").write_bytes(jpeg)
    screen = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")  # strict, like a terminal's
    csv_path, failed = predict(version, [str(folder)], tmp_path / "p.csv", out=screen)
    assert failed == 0
    _, rows = read_csv(csv_path)
    shown = str(folder / "bad\\xff.jpg")
    assert set(rows) == {shown, str(folder / "good.jpg")}
    assert rows[shown]["label"] == rows[str(folder / "good.jpg")]["label"] != ""
    screen.seek(0)
    assert "bad\\xff.jpg" in screen.buffer.read().decode("utf-8")


def test_a_fifo_gets_an_error_row_instead_of_blocking(version, images, tmp_path):
    folder, _, _ = images
    os.mkfifo(tmp_path / "pipe.jpg")  # reading it would wait for a writer forever
    inputs = [str(tmp_path / "pipe.jpg"), str(folder / "odd.jpg")]
    csv_path, failed = predict(version, inputs, tmp_path / "p.csv", out=io.StringIO())
    _, rows = read_csv(csv_path)
    assert failed == 1 and rows[inputs[0]]["error"] == "not a regular file" and rows[inputs[1]]["label"]


def test_a_crash_leaves_no_csv_and_no_temporary_file(version, images, tmp_path, monkeypatch):
    from keras_blood.serving.version import ExportedVersion

    folder, good, _ = images
    real, calls = ExportedVersion.serve, []

    def serve_that_crashes_on_every_second_batch(self):
        calls.append(1)
        if len(calls) % 2 == 0:
            raise RuntimeError("out of memory")
        return real.fget(self)

    monkeypatch.setattr(ExportedVersion, "serve", property(serve_that_crashes_on_every_second_batch))
    monkeypatch.chdir(tmp_path)
    inputs = [str(folder / name) for name in good]
    for output in (tmp_path / "out" / "p.csv", None):  # --output, and the default predictions/
        with pytest.raises(RuntimeError, match="out of memory"):
            predict(version, inputs, output, batch_size=1, out=io.StringIO())
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_output_refuses_an_existing_file_unless_overwrite(version, images, tmp_path, capsys):
    folder, _, _ = images
    existing = tmp_path / "p.csv"
    existing.write_text("keep me")
    command = [str(version), str(folder / "odd.jpg"), "--output", str(existing)]
    assert run_main(main, command) == 2
    assert capsys.readouterr().err == f"error: --output {existing} already exists; pass --overwrite to replace it\n"
    assert existing.read_text() == "keep me"
    assert run_main(main, [*command[:-1], str(tmp_path), "--overwrite"]) == 2  # a folder, never
    assert capsys.readouterr().err == f"error: --output {tmp_path} is a folder; name a CSV file\n"
    assert run_main(main, [*command, "--overwrite"]) == 0
    assert list(read_csv(existing)[1]) == [str(folder / "odd.jpg")]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.csv"]  # no temporary file left
