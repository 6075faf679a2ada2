"""Benchmark: does a version read the class from the background colour? (not part of the tests)

    python benchmarks/background_shift.py --kaggle DIR --bloodmnist DIR \\
        --pbc ../shared/data/pbc-captures/labels.tsv --bionet ../shared/data/labs/bionet_pk/labels.tsv \\
        --andrade ../shared/data/labs/leukocytes_andrade/labels.tsv \\
        --left-out andrade=VERSION [andrade=VERSION2 ...] [--shift yellow blue]

In bionet_pk the background follows the class (eosinophils on a yellowish field, lymphocytes
and monocytes on a bluish one), and a lab held back from development, whose captures have a
yellow background, had two thirds of its cells called eosinophils. This takes a lab's
left-out images (:func:`labs.left_out_images`: never a test split), shifts the colour of each
capture's background only (its pixels brighter than its mean luma, fully from half a standard
deviation above; the cell untouched), writes them as PNGs and scores each version on them
through its serving graph (``evaluate --data``), against the captures as they are: balanced
accuracy, and the share of the lab's other cells called the class that background colour
stands for in bionet_pk (yellow: eosinophil; blue: lymphocyte or monocyte).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run from a checkout without installing
sys.path.insert(0, str(REPO / "benchmarks"))

# The background's change in R, G, B (uint8 units), and the classes that colour stands for in bionet_pk.
SHIFTS = {"yellow": ((25.0, 15.0, -45.0), ("eosinophil",)), "blue": ((-35.0, -5.0, 25.0), ("lymphocyte", "monocyte"))}


def shifted_copies(listed: list[tuple[str, str]], shift, folder: Path) -> Path:
    """The captures with their background's colour moved by ``shift``, as a list file."""
    import cv2
    import numpy as np

    folder.mkdir(parents=True)
    rows = []
    for number, (file, label) in enumerate(listed):
        rgb = cv2.cvtColor(cv2.imread(file, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB).astype(np.float32)
        luma = rgb @ np.float32([0.299, 0.587, 0.114])
        background = np.clip(2.0 * (luma - luma.mean()) / max(luma.std(), 1.0), 0.0, 1.0)[..., None]
        moved = np.clip(np.round(rgb + background * np.float32(shift)), 0, 255).astype(np.uint8)
        path = folder / f"{number:04d}.png"
        cv2.imwrite(str(path), cv2.cvtColor(moved, cv2.COLOR_RGB2BGR))
        rows.append(f"{path}\t{label}\n")
    listing = folder / "labels.tsv"
    listing.write_text("file\tlabel\n" + "".join(rows))
    return listing


def scored(version: Path, listing: Path, stands_for: tuple[str, ...], reports: Path) -> tuple[float, float]:
    """Balanced accuracy (classes with 5 or more images) and the share of the cells of other
    classes called one of ``stands_for``."""
    import labs

    from keras_blood.evaluation.evaluate_version import evaluate_files

    metrics = evaluate_files(version, listing, output_dir=reports).metrics
    names = list(metrics["per_class"])
    confusion = metrics["confusion_matrix"]
    called = [names.index(c) for c in stands_for if c in names]
    others = [i for i, name in enumerate(names) if name not in stands_for]
    total = sum(sum(confusion[i]) for i in others)
    share = sum(confusion[i][j] for i in others for j in called) / max(total, 1)
    return labs.balanced_scored(metrics), share


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for lab in ("kaggle", "bloodmnist", "pbc", "bionet", "andrade"):
        parser.add_argument(f"--{lab}", type=Path, required=True)
    parser.add_argument("--left-out", nargs="+", required=True, metavar="LAB=VERSION")
    parser.add_argument("--shift", nargs="+", default=list(SHIFTS), choices=list(SHIFTS))
    args = parser.parse_args()
    import labs

    table = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        made: dict[tuple[str, str], Path] = {}
        for item in args.left_out:
            lab, version = item.split("=", 1)
            original = labs.left_out_images(lab, args, tmp)
            listed = [tuple(line.split("\t")) for line in original.read_text().splitlines()[1:]]
            for shift in args.shift:
                colour, stands_for = SHIFTS[shift]
                if (lab, shift) not in made:
                    made[lab, shift] = shifted_copies(listed, colour, tmp / f"{lab}-{shift}")
                before = scored(Path(version), original, stands_for, tmp / "reports")
                after = scored(Path(version), made[lab, shift], stands_for, tmp / "reports")
                row = (
                    f"| {lab} | {version} | {before[0]:.3f} ({before[1]:.2f}) | {shift} "
                    f"| {after[0]:.3f} | {after[1]:.2f} |"
                )
                table.append(row)
                print(row, flush=True)
    print(
        "\n| lab | version | as captured: balanced (others called that) | background | balanced | others called that |"
    )
    print("|---|---|---|---|---|---|")
    print("\n".join(table))


if __name__ == "__main__":
    main()
