"""Benchmark: from scratch vs BloodMNIST-pretrained, per model, on the Kaggle cell crops
(not part of the tests).

    python benchmarks/transfer_kaggle.py --kaggle DIR --bloodmnist DIR [--models basic dropout03 resnet vgg16]
        [--seeds 42] [--source resnet=runs/best/<timestamp>] [--runs-dir runs/transfer_kaggle]

For each model: a source run on BloodMNIST (its own config, e.g. configs/best.yaml for
resnet; or an existing run given with ``--source``), then two runs on the Kaggle images
with the same settings, one from a random initialisation and one from the source's
weights (``model.weights``: layers matched by name and shape, the head mapped by class
name; nothing else changes, so the weights are the only difference), once per seed (each
seed its own source, unless one is given). Each Kaggle run reads TEST once, at its end.
Prints one row per run (validation accuracy at the best epoch, TEST accuracy and macro F1,
training minutes, layers copied) and, with several seeds, the mean +- sd of each model and
start; writes the rows to ``transfer_kaggle-<timestamp>.csv``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run from a checkout without installing

# model -> (its config, overrides of its Kaggle runs). Epochs are bounded so that the whole
# table fits an afternoon on 2 CPU cores; scratch and pretrained get the same budget.
MODELS = {
    "basic": ("basic.yaml", ["train.epochs=20"]),
    "dropout03": ("dropout03.yaml", ["train.epochs=20"]),
    "resnet": ("best.yaml", ["train.epochs=12"]),
    # VGG16 on 32x32 crops, the size its BloodMNIST source saw (28 enlarged to 32).
    "vgg16": ("vgg16_bloodmnist.yaml", ["train.epochs=8", "data.cell_crop.size=32"]),
}
COLUMNS = ("val_acc", "test_acc", "test_f1", "train_min")


def run(config_file: str, overrides: list[str]) -> dict:
    from keras_blood.config.loading import load_config
    from keras_blood.training.trainer import train

    result = train(load_config(REPO / "configs" / config_file, overrides))
    metrics = json.loads((Path(result.run_dir) / "metrics.json").read_text())
    transfer = metrics.get("transfer") or {}
    return {
        "val_acc": metrics["best_val_accuracy"],
        "test_acc": metrics["accuracy"],
        "test_f1": metrics["f1_macro"],
        "train_min": metrics["train_seconds"] / 60,
        "copied": f"{transfer['layers_copied']} of {transfer['layers_with_weights']}" if transfer else "",
        "run": str(result.run_dir),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kaggle", type=Path, required=True, help="dataset2-master/images of the Kaggle set")
    parser.add_argument("--bloodmnist", type=Path, help="folder of bloodmnist.npz (to train the sources)")
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[42])
    parser.add_argument(
        "--source",
        action="append",
        default=[],
        metavar="MODEL=RUN",
        help="use this BloodMNIST run as MODEL's source instead of training one",
    )
    parser.add_argument("--runs-dir", type=Path, default=Path("runs/transfer_kaggle"))
    args = parser.parse_args()
    sources = dict(item.split("=", 1) for item in args.source if "=" in item)
    if len(sources) != len(args.source) or not set(sources) <= set(MODELS):
        parser.error(f"--source takes MODEL=RUN with MODEL one of {', '.join(MODELS)}; got {args.source}")
    if any(m not in sources for m in args.models) and args.bloodmnist is None:
        parser.error("--bloodmnist is needed to train the sources not given with --source")
    output = [f"output.runs_dir={args.runs_dir}", "output.publish=never"]
    kaggle = [f"data.root={args.kaggle}", "data.name=blood_cell_images", "data.image_size=[120,160]"]
    rows = []
    for model in args.models:
        config_file, kaggle_overrides = MODELS[model]
        for seed in args.seeds:
            settings = [f"seed={seed}", *output]
            source = sources.get(model)
            if source is None:
                print(f"== {model}, seed {seed}: source on BloodMNIST ({config_file})", flush=True)
                source = run(config_file, [f"data.root={args.bloodmnist}", *settings])["run"]
            for init, weights in (("scratch", []), ("BloodMNIST", [f"model.weights={source}"])):
                print(f"== {model}, seed {seed}: Kaggle, {init}", flush=True)
                row = run(config_file, [*kaggle, *kaggle_overrides, *weights, *settings])
                rows.append({"model": model, "init": init, "seed": seed, **row})
    out = Path(f"transfer_kaggle-{time.strftime('%Y%m%d-%H%M%S')}.csv")
    with out.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["model", "init", "seed", *COLUMNS, "copied", "run"])
        writer.writeheader()
        writer.writerows(rows)
    print(
        "| model | weights | seed | "
        + " | ".join(COLUMNS)
        + " | layers copied (of all with weights) |\n|"
        + "---|" * (len(COLUMNS) + 4)
    )
    for row in rows:
        print(
            f"| {row['model']} | {row['init']} | {row['seed']} | "
            + " | ".join(f"{row[c]:.4f}" for c in COLUMNS)
            + f" | {row['copied']} |"
        )
    if len(args.seeds) > 1:
        print("\n| model | weights | " + " | ".join(COLUMNS) + " |\n|" + "---|" * (len(COLUMNS) + 2))
        for model in args.models:
            for init in ("scratch", "BloodMNIST"):
                group = [row for row in rows if row["model"] == model and row["init"] == init]
                cells = [
                    f"{statistics.mean(r[c] for r in group):.4f} +- {statistics.stdev(r[c] for r in group):.4f}"
                    for c in COLUMNS
                ]
                print(f"| {model} | {init} | " + " | ".join(cells) + " |")
    print(out)


if __name__ == "__main__":
    main()
