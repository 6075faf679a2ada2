"""Benchmark: configs/best_kaggle.yaml over several seeds (not part of the tests).

    python benchmarks/best_kaggle.py --set data.root=DIR [--seeds 1 2 3] [--pbc ../shared/data/pbc-captures]

Trains the config once per seed (a full ``python -m keras_blood.train`` run: validation picks
nothing here, TEST is read once at the end), evaluates the exported version on TEST_SIMPLE
(one image per TEST source cell) and, with ``--pbc``, on the four Kaggle classes among
another lab's captures (``benchmarks/pbc_captures.py``). Prints one row per seed and the
mean +- sd: validation accuracy at the best epoch, TEST accuracy and macro F1, TEST_SIMPLE
accuracy, PBC accuracy, training minutes; writes them to ``best_kaggle-<timestamp>.csv``.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run from a checkout without installing

COLUMNS = ("val_acc", "test_acc", "test_f1", "test_simple_acc", "pbc_acc", "train_min")


def one_seed(seed: int, overrides: list[str], pbc: Path | None) -> dict:
    from benchmarks.pbc_captures import score
    from keras_blood.config.loading import load_config
    from keras_blood.evaluation.evaluate_version import evaluate
    from keras_blood.serving.predict import predict
    from keras_blood.training.trainer import train

    result = train(load_config(REPO / "configs" / "best_kaggle.yaml", [*overrides, f"seed={seed}"]))
    import json

    m = json.loads((Path(result.run_dir) / "metrics.json").read_text())
    row = {
        "seed": seed,
        "val_acc": m["best_val_accuracy"],
        "test_acc": m["accuracy"],
        "test_f1": m["f1_macro"],
        "train_min": m["train_seconds"] / 60,
        "version": str(result.export_dir),
    }
    root = [o for o in overrides if o.startswith("data.root=")]
    with tempfile.TemporaryDirectory() as tmp:
        row["test_simple_acc"] = evaluate(result.export_dir, root, "test_simple", Path(tmp)).metrics["accuracy"]
        if pbc is not None:
            predict(result.export_dir, [str(pbc)], Path(tmp) / "pbc.csv", out=io.StringIO())
            row["pbc_acc"] = score(Path(tmp) / "pbc.csv", pbc / "labels.tsv")[0]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--pbc", type=Path, help="folder of PBC captures with labels.tsv")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    rows = [one_seed(seed, args.overrides, args.pbc) for seed in args.seeds]
    out = Path(f"best_kaggle-{time.strftime('%Y%m%d-%H%M%S')}.csv")
    with out.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["seed", *COLUMNS, "version"])
        writer.writeheader()
        writer.writerows(rows)
    print("| seed | " + " | ".join(COLUMNS) + " |\n|" + "---|" * (len(COLUMNS) + 1))
    for row in rows:
        print(f"| {row['seed']} | " + " | ".join(f"{row.get(c, float('nan')):.4f}" for c in COLUMNS) + " |")
    cells = []
    for c in COLUMNS:
        values = [row[c] for row in rows if c in row]
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        cells.append(f"{statistics.mean(values):.4f} +- {sd:.4f}" if values else "-")
    print("| mean +- sd | " + " | ".join(cells) + " |")
    print(out)


if __name__ == "__main__":
    main()
