"""Score an exported Kaggle-set model on PBC captures of the same four classes (not part of the tests).

    python benchmarks/pbc_captures.py saved_models/best_kaggle-blood_cell_images/1 ../shared/data/pbc-captures
    python benchmarks/pbc_captures.py --csv predictions.csv ../shared/data/pbc-captures

Runs ``keras_blood.predict`` on the folder's JPEGs (as a new user would: raw files through the
version's ``serving_bytes``), or reads a CSV it wrote (``--csv``), keeps the rows whose
``labels.tsv`` class is one of the version's classes (the Kaggle set's four: 160 captures),
and prints the accuracy and the confusion matrix (rows: true class, columns: predicted).
These captures come from another lab (other stain, microscope, magnification and framing).
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run from a checkout without installing


def score(predictions: Path, labels: Path) -> tuple[float, list[str], list[list[int]]]:
    truth = {row["file"]: row["class"].lower() for row in csv.DictReader(labels.open(), delimiter="\t")}
    rows = list(csv.DictReader(predictions.open()))
    if not rows:
        sys.exit(f"error: {predictions} holds no predictions")
    classes = [name.lower() for name in rows[0] if name not in ("path", "label", "probability", "error")]
    index = {name: k for k, name in enumerate(classes)}
    matrix = [[0] * len(classes) for _ in classes]
    for row in rows:
        true = truth.get(Path(row["path"]).name)
        if true in index and row["label"]:
            matrix[index[true]][index[row["label"].lower()]] += 1
    total = sum(map(sum, matrix))
    if not total:
        sys.exit(f"error: no prediction in {predictions} matches a labelled capture of classes {classes}")
    return sum(matrix[k][k] for k in range(len(classes))) / total, classes, matrix


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("version", nargs="?", help="exported version folder (or use --csv)")
    parser.add_argument("captures", type=Path, help="folder of captures with labels.tsv")
    parser.add_argument("--csv", type=Path, help="score this predict CSV instead of predicting")
    args = parser.parse_args()
    if (args.version is None) == (args.csv is None):
        parser.error("give either a version or --csv")
    labels = args.captures / "labels.tsv"
    with tempfile.TemporaryDirectory() as tmp:
        predictions = args.csv
        if predictions is None:
            from keras_blood.serving.predict import predict

            predictions = Path(tmp) / "predictions.csv"
            # out: its per-file table goes nowhere; this prints a summary.
            _, failed = predict(args.version, [str(args.captures)], predictions, out=io.StringIO())
            if failed:
                print(f"warning: {failed} captures could not be classified", file=sys.stderr)
        accuracy, classes, matrix = score(predictions, labels)
    total = sum(map(sum, matrix))
    print(f"accuracy {accuracy:.4f} ({sum(matrix[k][k] for k in range(len(classes)))} of {total})")
    width = max(map(len, classes))
    print(" " * width + "  " + " ".join(f"{name[:5]:>5}" for name in classes))
    for name, row in zip(classes, matrix):
        print(f"{name:>{width}}  " + " ".join(f"{n:>5}" for n in row))


if __name__ == "__main__":
    main()
