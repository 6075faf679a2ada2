"""Benchmark: the lab table, how configs/wbc_multilab.yaml does in each lab (not part of the tests).

    python benchmarks/labs.py --kaggle DIR --bloodmnist DIR --pbc ../shared/data/pbc-captures/labels.tsv \\
        [--rows both kaggle bloodmnist] [--finetune 100 300 1000] [--reuse both=saved_models/wbc_multilab/1] \\
        [--set key=value ...]

Rows are what a model was trained on, with the config's one recipe: the Kaggle images
alone, BloodMNIST alone (its four white-cell classes), both; and the BloodMNIST model
fine-tuned on N Kaggle TRAIN images (``data.sources.kaggle.train_examples``; Kaggle's
validation split still picks the checkpoint). Columns are each lab's test, accuracy and
balanced accuracy, each read once per row:

- Kaggle TEST: the TEST folder's raw JPEGs, ``python -m keras_blood.evaluate VERSION --data DIR/TEST``;
- BloodMNIST test: its four white-cell classes, ``evaluate VERSION --split test`` with the
  BloodMNIST source alone (its 28x28 images put in the frame as in training);
- PBC-160: the 160 white-cell captures of ``../shared/data/pbc-captures`` (360x363 JPEGs,
  the lab BloodMNIST was made from), ``evaluate VERSION --data labels.tsv``.

Prints the table as Markdown and writes it to ``labs-<timestamp>.csv``. ``--reuse
ROW=VERSION`` scores a version already trained instead of training that row.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run from a checkout without installing

CONFIG = REPO / "configs" / "wbc_multilab.yaml"
LABS = ("kaggle_test", "bloodmnist_test", "pbc160")
# Fine-tuning a trained model on a few hundred images: smaller batches (a few steps an
# epoch otherwise) and a lower rate than training from scratch.
FINETUNE = ["train.batch_size=32", "train.learning_rate=0.001", "train.warmup_epochs=0", "train.epochs=20"]


def train_row(overrides: list[str]) -> tuple[Path, float]:
    """Train one row; its version and training minutes."""
    from keras_blood.config.loading import load_config
    from keras_blood.training.trainer import train

    result = train(load_config(CONFIG, overrides))
    if result.export_dir is None:
        sys.exit(f"error: the run {result.run_dir} published no version (set output.publish=always?)")
    with (result.run_dir / "history.csv").open() as rows:
        minutes = float(list(csv.DictReader(rows))[-1]["elapsed_minutes"])
    return result.export_dir, minutes


def score(version: Path, args, reports: Path) -> dict[str, float]:
    """Each lab's accuracy and balanced accuracy for ``version``."""
    from keras_blood.evaluation.evaluate_version import evaluate, evaluate_files

    results = {
        "kaggle_test": evaluate_files(version, args.kaggle / "TEST", output_dir=reports),
        "bloodmnist_test": evaluate(
            version,
            ["data.sources.kaggle=null", f"data.sources.bloodmnist={{name: bloodmnist, root: '{args.bloodmnist}'}}", *args.data_overrides],
            "test",
            reports,
        ),  # fmt: skip
        "pbc160": evaluate_files(version, args.pbc, output_dir=reports),
    }
    figures = {}
    for lab, result in results.items():
        figures[f"{lab}_acc"] = result.metrics["accuracy"]
        figures[f"{lab}_balanced"] = result.metrics["balanced_accuracy"]
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kaggle", type=Path, required=True, help="the Kaggle images folder (TRAIN/, TEST/)")
    parser.add_argument("--bloodmnist", type=Path, required=True, help="the folder of bloodmnist.npz")
    parser.add_argument("--pbc", type=Path, required=True, help="pbc-captures/labels.tsv, or a folder of class folders")
    parser.add_argument("--rows", nargs="+", default=["both", "kaggle", "bloodmnist"], choices=["both", "kaggle", "bloodmnist"])
    parser.add_argument("--finetune", type=int, nargs="*", default=[100, 300, 1000],
                        help="Kaggle TRAIN images to fine-tune the bloodmnist row on (none: no fine-tuning)")  # fmt: skip
    parser.add_argument("--reuse", action="append", default=[], metavar="ROW=VERSION", help="score this version as ROW")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    roots = [f"data.sources.kaggle.root={args.kaggle}", f"data.sources.bloodmnist.root={args.bloodmnist}"]
    args.data_overrides = [o for o in args.overrides if o.startswith("data.tfds_dir=")]
    reused = dict(item.split("=", 1) for item in args.reuse)
    rows = {
        "both": roots,
        "kaggle": [*roots, "data.sources.bloodmnist=null"],
        "bloodmnist": [*roots, "data.sources.kaggle=null"],
    }
    table: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        versions = {}
        for row, overrides in rows.items():
            if row not in args.rows and row not in reused:
                continue
            start = time.perf_counter()
            if row in reused:
                versions[row], minutes = Path(reused[row]), float("nan")
            else:
                versions[row], minutes = train_row([*overrides, *args.overrides, f"output.name=labs_{row}"])
            table.append({"row": row, "train_min": minutes, **score(versions[row], args, Path(tmp))})
            print(f"{row}: {json.dumps(table[-1])} ({(time.perf_counter() - start) / 60:.1f} min)", flush=True)
        for count in args.finetune if "bloodmnist" in versions else []:
            name = f"bloodmnist + {count} kaggle"
            tuned = [*rows["kaggle"], f"data.sources.kaggle.train_examples={count}", f"model.weights={versions['bloodmnist']}"]
            version, minutes = train_row([*tuned, *FINETUNE, *args.overrides, f"output.name=labs_finetune_{count}"])
            table.append({"row": name, "train_min": minutes, **score(version, args, Path(tmp))})
            print(f"{name}: {json.dumps(table[-1])}", flush=True)
    columns = ["row", *(f"{lab}_{kind}" for lab in LABS for kind in ("acc", "balanced")), "train_min"]
    out = Path(f"labs-{time.strftime('%Y%m%d-%H%M%S')}.csv")
    with out.open("w", newline="") as file:
        writer = csv.DictWriter(file, columns)
        writer.writeheader()
        writer.writerows(table)
    print("\n| trained on | Kaggle TEST acc | balanced | BloodMNIST test acc | balanced | PBC-160 acc | balanced | train min |")
    print("|---|---|---|---|---|---|---|---|")
    for entry in table:
        cells = [f"{entry[c]:.3f}" for c in columns[1:-1]] + [f"{entry['train_min']:.1f}"]
        print(f"| {entry['row']} | " + " | ".join(cells) + " |")
    print(f"\nwritten: {out}")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
