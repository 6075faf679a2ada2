"""python -m keras_blood.count: cells found, windows classified, counts per sample, the output folder."""

from __future__ import annotations

import csv
import math
import re

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from scipy.stats import binomtest

from keras_blood.config.schema import Config
from keras_blood.data.sources.image_folder.listing import list_images
from keras_blood.errors import DataError
from keras_blood.evaluation.count_report import review_name, write_count
from keras_blood.models.registry import build_model
from keras_blood.preparation.decode import decode_file
from keras_blood.preparation.finder import CellBox, find_cells
from keras_blood.serving.count import (
    MIN_COUNTED,
    SampleCount,
    capture_window,
    count_fields,
    sample_header,
    sample_row,
    wilson_interval,
    window_shape,
)
from keras_blood.serving.count_request import check_count_request, unique_names
from keras_blood.serving.export import publish_model
from keras_blood.serving.version import BYTES_SIGNATURE, load_version
from tests.helpers import command_lines, encode

CLASSES = ["neutrophil", "lymphocyte", "monocyte", "eosinophil"]


@pytest.fixture(scope="module")
def version(tmp_path_factory):
    """An untrained tiny white-cell model, published with an in-graph extent cell crop (as
    the multi-lab configs have it) at a 3:4 input: a real serving graph, in seconds."""
    root = tmp_path_factory.mktemp("publish")
    config = Config.model_validate(
        {
            "name": "tinywbc",
            "data": {
                "name": "image_folder",
                "image_size": [60, 80],
                "classes": CLASSES,
                "cell_crop": {"fit": "extent", "size": 16},
            },
            "model": {"name": "basic", "filters": [4, 4, 4], "dense_units": 8},
            "output": {"publish_dir": str(root)},
        }
    )
    keras.utils.set_random_seed(0)
    model = build_model(config.model, (16, 16, 3), len(CLASSES))
    return publish_model(model, config, CLASSES, {})


def stub_boxes(field: np.ndarray, config=None) -> list[CellBox]:
    """Three cells in every field (the finder is tested on its own): two inside, one cut by the top edge."""
    height, width = field.shape[:2]
    return [
        CellBox(10, 20, 39, 49, False, 0.9),
        CellBox(width - 45, height - 40, width - 16, height - 11, False, 0.8),
        CellBox(50, 0, 79, 14, True, 0.5),
    ]


def smear(folder, names, seed=0, size=(120, 160)):
    """Noisy made-up fields (the model gives each cell other probabilities), as PNGs."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        Image.fromarray(rng.integers(0, 256, (*size, 3)).astype(np.uint8)).save(folder / name)
    return folder


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    return rows[0], [dict(zip(rows[0], row)) for row in rows[1:]]


@pytest.fixture(scope="module")
def counted(version, tmp_path_factory):
    """One count of two samples (folders) of made-up fields, the finder stubbed: ``(folder, fields)``."""
    root = tmp_path_factory.mktemp("count")
    smear(root / "slideA", ["f1.png", "f2.png"], seed=1)
    smear(root / "slideB", ["f1.png"], seed=2)  # the same stem in another sample
    fields = check_count_request(version, [str(root / "slideA"), str(root / "slideB")])
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("keras_blood.serving.count.find_cells", stub_boxes)
        output = write_count(version, fields, root / "out", batch_size=4)
    return output, fields


def test_cells_csv_has_a_row_a_found_cell_with_its_box_edge_label_and_probabilities(counted):
    output, fields = counted
    header, rows = read_csv(output / "cells.csv")
    assert header == ["file", "sample", "xmin", "ymin", "xmax", "ymax", "edge", "label", "probability", *CLASSES]
    assert len(rows) == 3 * len(fields)
    assert [row["sample"] for row in rows] == ["slideA"] * 6 + ["slideB"] * 3
    expected = stub_boxes(np.zeros((120, 160, 3)))
    for i, row in enumerate(rows):
        box = expected[i % 3]
        assert [int(row[key]) for key in ("xmin", "ymin", "xmax", "ymax")] == [box.xmin, box.ymin, box.xmax, box.ymax]
        assert row["edge"] == ("true" if box.edge else "false")
        p = np.array([float(row[name]) for name in CLASSES])
        assert abs(p.sum() - 1) < 1e-4 and row["label"] == CLASSES[int(np.argmax(p))]
        assert float(row["probability"]) == p.max()
    assert len({row["probability"] for row in rows}) > 1  # each window classified on its own pixels


def test_samples_csv_counts_the_cells_inside_the_fields_and_leaves_edge_cells_out(counted):
    output, _ = counted
    _, cells = read_csv(output / "cells.csv")
    header, samples = read_csv(output / "samples.csv")
    assert header == sample_header(CLASSES)
    assert [row["sample"] for row in samples] == ["slideA", "slideB"]
    for row in samples:
        mine = [cell for cell in cells if cell["sample"] == row["sample"]]
        inside = [cell for cell in mine if cell["edge"] == "false"]
        assert int(row["cells_found"]) == len(mine) and int(row["edge_cells"]) == len(mine) - len(inside)
        assert int(row["cells_counted"]) == len(inside) and row[f"fewer_than_{MIN_COUNTED}"] == "true"
        for name in CLASSES:
            k = sum(cell["label"] == name for cell in inside)
            assert int(row[f"{name}_count"]) == k
            assert float(row[f"{name}_percent"]) == pytest.approx(100 * k / len(inside), abs=0.005)
            low, high = binomtest(k, len(inside)).proportion_ci(0.95, method="wilson")
            assert float(row[f"{name}_ci_low"]) == pytest.approx(100 * low, abs=0.005)
            assert float(row[f"{name}_ci_high"]) == pytest.approx(100 * high, abs=0.005)
    assert int(samples[0]["fields"]) == 2 and int(samples[1]["fields"]) == 1


def test_edge_cells_are_counted_with_count_edge_cells(version, tmp_path, monkeypatch):
    monkeypatch.setattr("keras_blood.serving.count.find_cells", stub_boxes)
    fields = check_count_request(version, [str(smear(tmp_path / "slide", ["a.png"]))])
    output = write_count(version, fields, tmp_path / "out", count_edge_cells=True)
    (row,) = read_csv(output / "samples.csv")[1]
    assert row["cells_counted"] == row["cells_found"] == "3" and row["edge_cells"] == "1"
    assert len(list((output / "review").rglob("*.png"))) == 3


def test_fields_without_a_cell_still_get_a_sample_row_and_figure(version, tmp_path, monkeypatch):
    monkeypatch.setattr("keras_blood.serving.count.find_cells", lambda field, config=None: [])
    fields = check_count_request(version, [str(smear(tmp_path / "bare", ["a.png", "b.png"]))])
    output = write_count(version, fields, tmp_path / "out")
    assert read_csv(output / "cells.csv")[1] == []
    (row,) = read_csv(output / "samples.csv")[1]
    assert (row["fields"], row["cells_counted"], row["neutrophil_percent"], row["fewer_than_100"]) == (
        "2",
        "0",
        "",
        "true",
    )
    assert (output / "samples" / "bare.png").is_file() and len(list((output / "fields").iterdir())) == 2


def test_the_folder_holds_annotated_fields_sample_figures_and_nothing_staged(counted):
    output, fields = counted
    names = sorted(p.name for p in (output / "fields").iterdir())
    assert names == ["f1-2.jpg", "f1.jpg", "f2.jpg"]  # two fields named f1: told apart
    for path in (output / "fields").iterdir():
        with Image.open(path) as image:
            assert image.size == (160, 120)
    assert sorted(p.name for p in (output / "samples").iterdir()) == ["slideA.png", "slideB.png"]
    with Image.open(output / "samples" / "slideA.png") as figure:
        assert figure.format == "PNG" and min(figure.size) > 200
    assert not [p for p in output.parent.iterdir() if p.name.startswith(".")]


def test_review_crops_sort_least_certain_first_and_read_back_as_a_labelled_folder(counted, version):
    output, _ = counted
    _, cells = read_csv(output / "cells.csv")
    review = output / "review"
    for folder in review.iterdir():
        names = sorted(p.name for p in folder.iterdir())
        certainty = [float(name.split("_", 1)[0]) for name in names]
        assert certainty == sorted(certainty)
    inside = [cell for cell in cells if cell["edge"] == "false"]
    listing = list_images(review, classes=load_version(version).class_names, draw=False, min_classes=1)
    assert len(listing) == len(inside)
    assert set(listing.class_names) <= set(CLASSES)
    filed = {file: listing.class_names[label] for file, label in zip(listing.files, listing.labels)}
    # cells.csv's rows of a field come in the finder's order: the index in a crop's name.
    field_names = {"slideA/f1.png": "f1", "slideA/f2.png": "f2", "slideB/f1.png": "f1-2"}
    index: dict[str, int] = {}
    for cell in cells:
        key = "/".join(cell["file"].replace("\\", "/").split("/")[-2:])
        i = index[key] = index.get(key, -1) + 1
        if cell["edge"] == "true":
            continue
        name = review_name(float(cell["probability"]), field_names[key], i)
        assert filed[f"{cell['label']}/{name}"] == cell["label"]


def test_review_names_order_by_certainty():
    names = [review_name(p, "field", i) for i, p in enumerate([0.99995, 0.41, 0.4123, 1.0, 0.05])]
    assert [name.split("_")[0] for name in sorted(names)] == ["0.0500", "0.4100", "0.4123", "1.0000", "1.0000"]


def test_wilson_intervals_are_scipys_and_not_the_exact_ones():
    low, high = wilson_interval(5, 100)
    assert (low, high) == pytest.approx((0.0215, 0.1118), abs=5e-5)  # the Wilson interval of 5 in 100
    exact = binomtest(5, 100).proportion_ci(0.95)  # Clopper-Pearson: wider
    assert exact.low < low and exact.high > high
    count = SampleCount("s", 3, 130, 10, {"neutrophil": 70, "lymphocyte": 40, "monocyte": 5, "eosinophil": 5})
    assert count.counted == 120 and not count.few
    for name, k in count.counts.items():
        interval = binomtest(k, 120).proportion_ci(0.95, method="wilson")
        assert count.interval(name) == pytest.approx((100 * interval.low, 100 * interval.high))
    assert all(math.isnan(v) for v in wilson_interval(0, 0))


def test_a_sample_of_fewer_than_100_cells_is_flagged():
    def flag(counted: int) -> str:
        counts = {"neutrophil": counted, "lymphocyte": 0, "monocyte": 0, "eosinophil": 0}
        return sample_row(SampleCount("s", 1, counted, 0, counts), CLASSES)[-1]

    assert [flag(99), flag(100), flag(0)] == ["true", "false", "true"]
    empty = sample_row(SampleCount("s", 1, 0, 0, dict.fromkeys(CLASSES, 0)), CLASSES)
    assert empty[5:9] == ["0", "", "", ""]  # nothing counted: no percentage, no interval


def test_the_window_is_centred_on_the_cell_in_the_models_aspect():
    field = np.zeros((100, 200, 3), np.uint8)
    field[40:60, 90:110] = 255  # the cell: a 20x20 box
    box = CellBox(90, 40, 109, 59, False, 1.0)
    assert window_shape(box, (60, 80), 0.4) == (50, 67)  # shorter side 20 / 0.4, aspect 3:4
    window = capture_window(field, box, (60, 80), 0.4)
    rows, cols = np.nonzero(window[..., 0] == 255)
    assert window.shape == (50, 67, 3) and rows.size == 400
    assert abs((rows.min() + rows.max()) / 2 - 24.5) <= 0.5 and abs((cols.min() + cols.max()) / 2 - 33) <= 0.5
    # Past the field's edge: the fill colour (default: the field's median), the cell still centred.
    corner = CellBox(0, 0, 19, 19, True, 1.0)
    window = capture_window(field, corner, (1, 1), 0.4, fill=np.array([7, 8, 9]))
    assert window.shape == (50, 50, 3) and (window[0, 0] == [7, 8, 9]).all() and (window[25, 25] == 0).all()
    assert (capture_window(field, corner, (1, 1), 0.4)[0, 0] == 0).all()
    # A box as large as a huge field: the window is cut at a coarser scale, not at gigabytes.
    huge = CellBox(0, 0, 9999, 9999, False, 1.0)
    assert max(capture_window(field, huge, (3, 4), 0.4).shape) == 2048


@pytest.mark.slow
def test_windows_get_what_serving_bytes_gives_the_same_windows_as_png_files(version, tmp_path, monkeypatch):
    monkeypatch.setattr("keras_blood.serving.count.find_cells", stub_boxes)
    loaded = load_version(version)
    fields = check_count_request(version, [str(smear(tmp_path / "s", ["a.png", "b.png"], seed=3))])
    results = list(count_fields(loaded, fields, batch_size=4))
    windows = [window for result in results for window in result.windows]
    counted = np.concatenate([result.probabilities for result in results])
    files = tf.constant([encode(window, "PNG") for window in windows])
    served = loaded.loaded.signatures[BYTES_SIGNATURE](images=files)["probabilities"].numpy()
    np.testing.assert_allclose(counted, served, atol=1e-6)
    by_one = np.concatenate([r.probabilities for r in count_fields(loaded, fields, batch_size=1)])
    np.testing.assert_allclose(by_one, counted, atol=1e-6)  # batches across fields change nothing


def test_samples_are_the_folders_named_or_the_sample_pattern(tmp_path):
    version = tmp_path / "version"  # the request is checked before a version is loaded: its saved_model.pb will do
    version.mkdir()
    (version / "saved_model.pb").write_bytes(b"")
    smear(tmp_path / "run" / "p1", ["p1_a.png"])
    smear(tmp_path / "run" / "p2", ["p2_b.png", "p1_c.png"])
    smear(tmp_path / "loose", ["x.png"])
    inputs = [str(tmp_path / "run"), str(tmp_path / "loose" / "x.png")]
    fields = check_count_request(version, inputs)
    assert [(f.sample, f.name) for f in fields] == [("run", "p1_a"), ("run", "p1_c"), ("run", "p2_b"), ("loose", "x")]
    fields = check_count_request(version, [str(tmp_path / "run")], pattern=r"(p\d)_\w\.png$")
    assert [f.sample for f in fields] == ["p1", "p1", "p2"]
    glob = check_count_request(version, [str(tmp_path / "run" / "*" / "*.png")])
    assert [f.sample for f in glob] == ["p1", "p2", "p2"]  # a glob's files: their folders
    smear(tmp_path / "a" / "slide", ["1.png"])
    smear(tmp_path / "b" / "slide", ["2.png"])
    with pytest.raises(DataError, match="two sample folders are named 'slide'.*--sample-pattern"):
        check_count_request(version, [str(tmp_path / "a" / "slide"), str(tmp_path / "b" / "slide")])


def test_unique_names_make_safe_distinct_file_names():
    assert unique_names(["a", "A", "a", ".hidden", "b c/d", "caf\udce9"]) == [
        "a",
        "A-2",
        "a-3",
        "hidden",
        "b_c_d",
        "caf_",
    ]


@pytest.mark.parametrize(
    ("make", "args", "message"),
    [
        ("fields", ["{tmp}/nowhere", "{tmp}/fields"], "(no saved_model.pb)"),
        ("empty", ["{version}", "{tmp}/empty"], "no image files found in"),
        ("fields", ["{version}", "{tmp}/fields/missing.png"], "missing.png: no such file or folder"),
        ("fields", ["{version}", "{tmp}/fields", "--sample-pattern", "(unclosed"], "is not a regular expression"),
        ("fields", ["{version}", "{tmp}/fields", "--sample-pattern", "slide"], "has no (group)"),
        ("fields", ["{version}", "{tmp}/fields", "--sample-pattern", "(zzz)"], "does not match"),
        ("fields", ["{version}", "{tmp}/fields", "--max-pixels", "100"], "more than the limit of 100 (--max-pixels)"),
        ("corrupt", ["{version}", "{tmp}/fields"], "bad.png: corrupt or truncated image"),
        ("fields", ["{version}", "{tmp}/fields", "--output", "{tmp}/fields/out"], "is inside the input folder"),
    ],
)
def test_bad_inputs_are_one_line_and_exit_2_with_nothing_written(
    version, command, tmp_path, monkeypatch, make, args, message
):
    monkeypatch.setattr("keras_blood.serving.count.find_cells", stub_boxes)
    smear(tmp_path / "fields", ["a.png"], size=(40, 60))
    (tmp_path / "empty").mkdir()
    if make == "corrupt":
        (tmp_path / "fields" / "bad.png").write_bytes(encode(np.zeros((40, 60, 3), np.uint8), "PNG")[:60])
    args = [arg.format(tmp=tmp_path, version=version) for arg in args]
    if "--output" not in args:
        args += ["--output", str(tmp_path / "out")]
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    result = command("keras_blood.count", *args)
    lines = command_lines(result.stderr)
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert message in lines[0] and "Traceback" not in result.stderr
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing written


@pytest.mark.slow
def test_an_output_that_holds_files_is_replaced_only_with_overwrite(version, command, tmp_path, monkeypatch):
    monkeypatch.setattr("keras_blood.serving.count.find_cells", stub_boxes)
    smear(tmp_path / "fields", ["a.png"])
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    args = [str(version), str(tmp_path / "fields"), "--output", str(tmp_path / "out")]
    result = command("keras_blood.count", *args)
    assert result.returncode == 2 and "is not empty; pass --overwrite" in result.stderr
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"
    result = command("keras_blood.count", *args, "--overwrite")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == str(tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "cells.csv",
        "fields",
        "review",
        "samples",
        "samples.csv",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fields", "out"]  # nothing staged left
    assert re.search(r"1/1 files", result.stderr)  # progress on stderr
    # Without --output: a new folder under counts/, named after the version.
    result = command("keras_blood.count", *args[:2])
    written = result.stdout.strip().splitlines()[-1]
    assert result.returncode == 0 and re.fullmatch(r"counts/tinywbc-v1-\d{8}-\d{6}", written)
    assert (tmp_path / written / "samples.csv").is_file()


@pytest.mark.e2e
@pytest.mark.slow
def test_a_count_of_real_bccd_fields_matches_the_finder_and_the_tables_agree(version, bccd_fields, tmp_path, command):
    files = [str(bccd_fields / f"BloodImage_0000{i}.jpg") for i in (0, 1, 3)]
    result = command("keras_blood.count", str(version), *files, "--output", str(tmp_path / "out"), "--batch-size", "2")
    assert result.returncode == 0, result.stderr
    _, cells = read_csv(tmp_path / "out" / "cells.csv")
    found = {path: find_cells(decode_file(open(path, "rb").read()).numpy()) for path in files}
    assert [cell["file"] for cell in cells] == [path for path in files for _ in found[path]]
    boxes = [box for path in files for box in found[path]]
    assert boxes, "the finder found no white cell in three BCCD fields"
    for cell, box in zip(cells, boxes):
        assert (int(cell["xmin"]), int(cell["ymin"]), int(cell["xmax"]), int(cell["ymax"])) == (
            box.xmin,
            box.ymin,
            box.xmax,
            box.ymax,
        )
        assert cell["edge"] == ("true" if box.edge else "false") and cell["sample"] == "bccd_fields"
    (row,) = read_csv(tmp_path / "out" / "samples.csv")[1]
    inside = [cell for cell in cells if cell["edge"] == "false"]
    assert int(row["cells_counted"]) == len(inside) and row["fewer_than_100"] == "true"
    if inside:
        assert sum(float(row[f"{name}_percent"]) for name in CLASSES) == pytest.approx(100, abs=0.02)
    assert sorted(p.name for p in (tmp_path / "out" / "fields").iterdir()) == [
        f"BloodImage_0000{i}.jpg" for i in (0, 1, 3)
    ]
