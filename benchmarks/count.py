"""Benchmark: the white-cell finder (keras_blood/preparation/finder.py) on whole fields (not
part of the tests).

    python benchmarks/count.py --bccd ../shared/data/labs/bccd_fields --bionet ../shared/data/labs/bionet_pk \\
        [--split val] [--version saved_models/NAME/N] [--repeats 3]

- BCCD fields (``--bccd``: the JPEGs, ``boxes.tsv``, ``labels.tsv``): the fields of BCCD's own
  ``--split`` (labels.tsv's split column; fields without a row there have no split and are
  left out), every WBC box of boxes.tsv against the finder's boxes, matched one to one by
  IoU: recall and precision at IoU 0.5 and at 0.3 (a cell found where the box is loose or
  tight counts at 0.3 only), the fields with a missed or an extra cell, and how the fields
  with two white cells fare. Parameters are chosen on train and val; test is read once.
- bionet (``--bionet``: the JPEGs and ``labels.tsv``): one labelled white cell a field,
  so the share of fields where the finder finds exactly one, none, or more than one.
- Speed: fields a second of :func:`find_cells` alone on 640x480 fields already decoded
  in memory, one field a call, after one warm-up call (the median of ``--repeats``).
- ``--version``: the classifier on the finder's cells (:func:`classifier_rows`).

Prints Markdown tables.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run from a checkout without installing

IOUS = (0.5, 0.3)
Box = tuple[int, int, int, int]  # xmin, ymin, xmax, ymax, inclusive


def read_tsv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as rows:
        return list(csv.DictReader(rows, delimiter="\t"))


def bccd_fields(folder: Path, splits: list[str]) -> dict[str, list[Box]]:
    """File name -> its WBC boxes, for the fields of ``splits`` ("unsplit": the fields labels.tsv leaves out)."""
    split_of = {row["file"]: row["split"] for row in read_tsv(folder / "labels.tsv")}
    chosen = {path.name for path in folder.glob("*.jpg") if split_of.get(path.name, "unsplit") in splits}
    truth: dict[str, list[Box]] = {name: [] for name in sorted(chosen)}
    for row in read_tsv(folder / "boxes.tsv"):
        if row["class"] == "WBC" and row["file"] in truth:
            truth[row["file"]].append(tuple(int(row[key]) for key in ("xmin", "ymin", "xmax", "ymax")))
    return truth


def read_field(path: Path):
    """uint8 RGB [H, W, 3], decoded by the package's one rule."""
    from keras_blood.preparation.decode import decode_file

    return decode_file(path.read_bytes()).numpy()


def iou(a: Box, b: Box) -> float:
    width = min(a[2], b[2]) - max(a[0], b[0]) + 1
    height = min(a[3], b[3]) - max(a[1], b[1]) + 1
    if width <= 0 or height <= 0:
        return 0.0
    inter = width * height

    def area(box):
        return (box[2] - box[0] + 1) * (box[3] - box[1] + 1)

    return inter / (area(a) + area(b) - inter)


def matched(found: list[Box], truth: list[Box], threshold: float) -> int:
    """How many truth boxes a found box matches at IoU >= threshold, one to one, the best pairs first."""
    pairs = sorted(((iou(f, t), i, j) for i, f in enumerate(found) for j, t in enumerate(truth)), reverse=True)
    used_found, used_truth = set(), set()
    for overlap, i, j in pairs:
        if overlap < threshold:
            break
        if i not in used_found and j not in used_truth:
            used_found.add(i)
            used_truth.add(j)
    return len(used_truth)


def score_bccd(found: dict[str, list[Box]], truth: dict[str, list[Box]]) -> dict[str, float]:
    """Recall, precision, fields with a missed or an extra cell, at each IoU of IOUS."""
    result: dict[str, float] = {
        "fields": len(truth),
        "white cells": sum(map(len, truth.values())),
        "found": sum(map(len, found.values())),
    }
    for threshold in IOUS:
        hits = {name: matched(found[name], boxes, threshold) for name, boxes in truth.items()}
        true = sum(hits.values())
        result[f"recall@{threshold}"] = true / max(result["white cells"], 1)
        result[f"precision@{threshold}"] = true / max(result["found"], 1)
        result[f"missed fields@{threshold}"] = sum(hits[name] < len(boxes) for name, boxes in truth.items())
        result[f"extra fields@{threshold}"] = sum(hits[name] < len(found[name]) for name in truth)
    two = [name for name, boxes in truth.items() if len(boxes) == 2]
    result["two-cell fields"] = len(two)
    result["two-cell fields, both found@0.5"] = sum(matched(found[name], truth[name], 0.5) == 2 for name in two)
    return result


def count_share(counts: list[int]) -> dict[str, float]:
    total = max(len(counts), 1)
    return {
        "fields": len(counts),
        "exactly one": sum(c == 1 for c in counts) / total,
        "none": sum(c == 0 for c in counts) / total,
        "more than one": sum(c > 1 for c in counts) / total,
    }


def fields_per_second(fields: list, config, repeats: int) -> tuple[float, float]:
    """find_cells one field a call, after a warm-up call: the median over ``repeats`` passes
    of fields a second, and of CPU milliseconds a field (all threads; on a shared machine
    this one moves less than the rate)."""
    from keras_blood.preparation.finder import find_cells

    find_cells(fields[0], config)
    rates, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        for field in fields:
            find_cells(field, config)
        rates.append(len(fields) / (time.perf_counter() - start))
        cpu.append(1000 * (time.process_time() - start_cpu) / len(fields))
    return statistics.median(rates), statistics.median(cpu)


def run_finder(fields: dict[str, object], config=None) -> dict[str, list[Box]]:
    from keras_blood.preparation.finder import find_cells

    return {
        name: [(box.xmin, box.ymin, box.xmax, box.ymax) for box in find_cells(field, config)]
        for name, field in fields.items()
    }


def classifier_rows(args, bionet: dict[str, object]) -> list[str]:
    """The classifier on the finder's cells (``--version``): each bionet field's surest cell,
    cut out as the count command cuts it (:func:`keras_blood.serving.count.capture_window`),
    PNG-encoded and classified by the version's ``serving_bytes`` signature, against
    labels.tsv; and fields a second, finder and classifier together, one field a call.
    Nothing without ``--version``."""
    if args.version is None:
        return []
    import cv2
    import numpy as np
    import tensorflow as tf

    from keras_blood.preparation.finder import find_cells
    from keras_blood.serving.count import capture_window
    from keras_blood.serving.version import BYTES_SIGNATURE, OUTPUT_KEY, read_signature

    signature = read_signature(args.version)
    classes = [name.lower() for name in signature.class_names]
    serve = tf.saved_model.load(str(args.version)).signatures[BYTES_SIGNATURE]
    labels = {row["file"]: row["label"].lower() for row in read_tsv(args.bionet / "labels.tsv")}

    def classify(field) -> str | None:
        cells = find_cells(field)
        if not cells:
            return None
        window = capture_window(field, cells[0], tuple(signature.input_shape[:2]))
        encoded = cv2.imencode(".png", np.ascontiguousarray(window[..., ::-1]))[1].tobytes()
        probabilities = serve(images=tf.constant([encoded]))[OUTPUT_KEY].numpy()[0]
        return classes[int(np.argmax(probabilities))]

    names = list(bionet)
    classify(bionet[names[0]])  # warm-up: the first calls trace
    start = time.perf_counter()
    predicted = {name: classify(bionet[name]) for name in names}
    rate = len(names) / (time.perf_counter() - start)
    recalls = {}
    for label in sorted({labels[name] for name in names}):
        mine = [name for name in names if labels[name] == label]
        recalls[label] = sum(predicted[name] == label for name in mine) / len(mine)
    rows = [[label, f"{sum(labels[n] == label for n in names)}", f"{recall:.3f}"] for label, recall in recalls.items()]
    return [
        f"\nClassifier {args.version} on the finder's surest cell of each bionet field "
        f"(no cell found counts as wrong): balanced accuracy {statistics.mean(recalls.values()):.3f}; "
        f"finder + classifier {rate:.1f} fields/s.\n",
        table(["class", "fields", "recall"], rows),
    ]


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bccd", type=Path, required=True, help="bccd_fields folder (JPEGs, boxes.tsv, labels.tsv)")
    parser.add_argument("--bionet", type=Path, required=True, help="bionet_pk folder (JPEGs, labels.tsv)")
    parser.add_argument("--split", nargs="+", default=["val"], choices=["train", "val", "test", "unsplit"])
    parser.add_argument("--version", type=Path, help="a served version to classify the found cells")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes for the speed figure")
    args = parser.parse_args(argv)

    truth = bccd_fields(args.bccd, args.split)
    bccd = {name: read_field(args.bccd / name) for name in truth}
    bionet = {row["file"]: read_field(args.bionet / row["file"]) for row in read_tsv(args.bionet / "labels.tsv")}

    bccd_scores = score_bccd(run_finder(bccd), truth)
    bionet_scores = count_share([len(boxes) for boxes in run_finder(bionet).values()])
    sized = [field for field in [*bccd.values(), *bionet.values()] if field.shape[:2] == (480, 640)]
    rate, cpu_ms = fields_per_second(sized, None, args.repeats)

    split = "+".join(args.split)
    print(f"\nBCCD {split}: {bccd_scores['fields']} fields, {bccd_scores['white cells']} white cells\n")
    rows = []
    for threshold in IOUS:
        rows.append(
            [
                f"{threshold}",
                f"{bccd_scores[f'recall@{threshold}']:.3f}",
                f"{bccd_scores[f'precision@{threshold}']:.3f}",
                f"{bccd_scores[f'missed fields@{threshold}']}",
                f"{bccd_scores[f'extra fields@{threshold}']}",
            ]
        )
    print(table(["IoU", "recall", "precision", "fields with a missed cell", "fields with an extra box"], rows))
    print(
        f"\nFields with two white cells: {bccd_scores['two-cell fields']}, "
        f"both found at IoU 0.5 in {bccd_scores['two-cell fields, both found@0.5']}.\n"
    )
    print(
        table(
            ["bionet fields", "exactly one found", "none", "more than one"],
            [
                [
                    f"{bionet_scores['fields']}",
                    f"{bionet_scores['exactly one']:.3f}",
                    f"{bionet_scores['none']:.3f}",
                    f"{bionet_scores['more than one']:.3f}",
                ]
            ],
        )
    )
    print(
        f"\nFinder alone: {rate:.1f} fields/s, {cpu_ms:.1f} CPU ms a field (640x480, one a call, {len(sized)} fields)."
    )
    for line in classifier_rows(args, bionet):
        print(line)


if __name__ == "__main__":
    main()
