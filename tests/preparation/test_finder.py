"""The white-cell finder (keras_blood/preparation/finder.py): synthetic smears drawn with
OpenCV, a SavedModel round trip, and a few real BCCD fields checked against boxes.tsv."""

from __future__ import annotations

import csv

import cv2
import numpy as np
import pytest
import tensorflow as tf

from keras_blood.errors import ConfigError, DataError
from keras_blood.preparation.finder import CellBox, FinderConfig, find_cells, find_cells_tf, red_cell_diameter

BACKGROUND = (232, 226, 236)
RED_CELL = (222, 160, 160)  # pale pink: below the finder's saturation and outside its hues
PALLOR = (230, 200, 205)
CYTOPLASM = (200, 190, 225)
NUCLEUS = (110, 70, 170)  # purple, strongly saturated: the stain the finder looks for


def smear(white=(), platelets=(), height=480, width=640, diameter=48, seed=0) -> np.ndarray:
    """A uint8 RGB field: pink red cells (``diameter``, a pale centre) on a grid, jittered,
    around the white cells ``(x, y, cell radius, nucleus radius)`` and ``platelets`` (x, y)."""
    rng = np.random.default_rng(seed)
    field = np.full((height, width, 3), BACKGROUND, np.uint8)
    step = int(diameter * 1.15)
    for y in range(diameter // 2, height, step):
        for x in range(diameter // 2, width, step):
            cx, cy = x + int(rng.integers(-4, 5)), y + int(rng.integers(-4, 5))
            if any((cx - x0) ** 2 + (cy - y0) ** 2 < (r0 + diameter // 2 + 4) ** 2 for x0, y0, r0, _ in white):
                continue
            cv2.circle(field, (cx, cy), diameter // 2, RED_CELL, -1)
            cv2.circle(field, (cx, cy), diameter // 6, PALLOR, -1)
    for x, y, radius, nucleus in white:
        cv2.circle(field, (x, y), radius, CYTOPLASM, -1)
        cv2.circle(field, (x, y), nucleus, NUCLEUS, -1)
    for x, y in platelets:
        cv2.circle(field, (x, y), 4, NUCLEUS, -1)
    return cv2.GaussianBlur(field, (5, 5), 1.0)


def iou(a, b) -> float:
    """IoU of two (xmin, ymin, xmax, ymax) boxes with inclusive corners."""
    width = min(a[2], b[2]) - max(a[0], b[0]) + 1
    height = min(a[3], b[3]) - max(a[1], b[1]) + 1
    if width <= 0 or height <= 0:
        return 0.0
    inter = width * height
    areas = [(box[2] - box[0] + 1) * (box[3] - box[1] + 1) for box in (a, b)]
    return inter / (sum(areas) - inter)


def corners(box: CellBox) -> tuple[int, int, int, int]:
    return box.xmin, box.ymin, box.xmax, box.ymax


def cell_box(x, y, radius) -> tuple[int, int, int, int]:
    return x - radius, y - radius, x + radius, y + radius


def test_one_white_cell_among_red_cells_gives_one_box_around_it():
    cells = find_cells(smear(white=[(320, 240, 45, 32)]))
    assert len(cells) == 1
    assert iou(corners(cells[0]), cell_box(320, 240, 45)) >= 0.7
    assert not cells[0].edge and cells[0].score > 0


def test_two_touching_white_cells_give_two_boxes():
    cells = find_cells(smear(white=[(275, 240, 45, 32), (365, 240, 45, 32)]))  # cytoplasm touching
    assert len(cells) == 2
    for x in (275, 365):
        assert max(iou(corners(cell), cell_box(x, 240, 45)) for cell in cells) >= 0.5


def test_a_lobed_nucleus_is_one_cell():
    field = smear(white=[(320, 240, 45, 0)])
    for dx, dy in ((-16, -10), (14, -12), (0, 14)):  # three lobes, apart, of one neutrophil
        cv2.circle(field, (320 + dx, 240 + dy), 12, NUCLEUS, -1)
    assert len(find_cells(field)) == 1


def test_a_cell_cut_by_the_left_edge_is_marked():
    cells = find_cells(smear(white=[(15, 240, 45, 32)]))
    assert len(cells) == 1
    assert cells[0].edge and cells[0].xmin == 0
    assert iou(corners(cells[0]), (0, 195, 60, 285)) >= 0.5


def test_red_cells_and_platelets_alone_give_no_box():
    assert find_cells(smear()) == []
    assert find_cells(smear(platelets=[(100, 100), (400, 300), (520, 90)])) == []


def test_a_magnified_field_gives_the_same_cells():
    field = smear(white=[(275, 240, 45, 32), (365, 240, 45, 32)], platelets=[(100, 100), (500, 380)])
    for zoom in (0.5, 2.0):
        scaled = cv2.resize(
            field, None, fx=zoom, fy=zoom, interpolation=cv2.INTER_AREA if zoom < 1 else cv2.INTER_LINEAR
        )
        measured = float(red_cell_diameter(tf.constant(scaled), FinderConfig().acf_ratio))
        assert measured == pytest.approx(
            zoom * float(red_cell_diameter(tf.constant(field), FinderConfig().acf_ratio)), rel=0.15
        )
        cells = find_cells(scaled)
        assert len(cells) == 2
        for x in (275, 365):
            truth = [round(zoom * value) for value in cell_box(x, 240, 45)]
            assert max(iou(corners(cell), truth) for cell in cells) >= 0.5


def test_the_tensorflow_finder_pads_to_a_fixed_number_of_slots():
    config = FinderConfig(max_cells=4)
    fields = np.stack([smear(white=[(320, 240, 45, 32)]), smear()])
    found = find_cells_tf(tf.constant(fields), config)
    assert found.boxes.shape == (2, 4, 4) and found.valid.shape == (2, 4)
    assert found.valid.numpy().tolist() == [[True, False, False, False], [False] * 4]
    assert not found.boxes.numpy()[1].any() and not found.scores.numpy()[1].any()


def test_a_field_that_is_not_rgb_and_a_bad_config_are_one_line_errors():
    with pytest.raises(DataError, match=r"uint8 RGB"):
        find_cells(np.zeros((40, 40), np.uint8))
    with pytest.raises(ConfigError, match="max_cells"):
        FinderConfig(max_cells=0)


@pytest.mark.slow
def test_the_finder_runs_inside_a_saved_model_on_encoded_fields(tmp_path):
    """Encoded field in, boxes out: the graph a serving signature would hold."""
    module = tf.Module()

    @tf.function(input_signature=[tf.TensorSpec([], tf.string)])
    def serving_fields(data):
        field = tf.io.decode_image(data, channels=3, expand_animations=False)
        found = find_cells_tf(field[None])
        return {"boxes": found.boxes[0], "valid": found.valid[0], "edge": found.edge[0]}

    module.serving_fields = serving_fields
    tf.saved_model.save(module, str(tmp_path / "finder"), signatures={"serving_fields": serving_fields})
    field = smear(white=[(320, 240, 45, 32)])
    encoded = cv2.imencode(".png", field[..., ::-1])[1].tobytes()
    served = tf.saved_model.load(str(tmp_path / "finder")).signatures["serving_fields"](data=tf.constant(encoded))
    boxes = served["boxes"].numpy()[served["valid"].numpy()]
    assert [tuple(box) for box in boxes] == [corners(cell) for cell in find_cells(field)]


# ----------------------------------------------------------------------------- real fields


def white_boxes(root, name) -> list[tuple[int, int, int, int]]:
    with (root / "boxes.tsv").open(newline="") as rows:
        return [
            tuple(int(row[key]) for key in ("xmin", "ymin", "xmax", "ymax"))
            for row in csv.DictReader(rows, delimiter="\t")
            if row["file"] == name and row["class"] == "WBC"
        ]


def read_field(root, name) -> np.ndarray:
    return cv2.imread(str(root / name))[..., ::-1].copy()


@pytest.mark.e2e
@pytest.mark.parametrize("name", ["BloodImage_00010.jpg", "BloodImage_00005.jpg"])
def test_real_fields_white_cells_are_found_where_bccd_boxes_them(bccd_fields, name):
    """00010: two white cells side by side; 00005: one cut by the field's bottom edge."""
    truth = white_boxes(bccd_fields, name)
    cells = find_cells(read_field(bccd_fields, name))
    assert len(cells) == len(truth)
    for box in truth:
        best = max(cells, key=lambda cell: iou(corners(cell), box))
        assert iou(corners(best), box) >= 0.5
        touches = box[0] <= 1 or box[1] <= 1 or box[2] >= 638 or box[3] >= 478
        assert best.edge == touches


@pytest.mark.e2e
def test_a_real_field_cut_to_leave_its_white_cell_out_gives_no_box(bccd_fields):
    name = "BloodImage_00000.jpg"
    ((xmin, ymin, xmax, ymax),) = white_boxes(bccd_fields, name)
    field = read_field(bccd_fields, name)
    left_of_cell = field[:, : max(xmin - 10, 0)]
    assert left_of_cell.shape[1] >= 200
    assert find_cells(left_of_cell) == []
