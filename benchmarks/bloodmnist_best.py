"""Benchmark: the best BloodMNIST 28x28 recipe over several seeds, plus optional ablations.

    python benchmarks/bloodmnist_best.py --set data.root=DIR [--seeds 1 2 3] [--ablation]

Trains ``configs/best.yaml`` once per seed (each a full ``keras_blood.train`` run that
reads the test split once, at the end), then prints test ACC / AUC, ACC without
test-time augmentation and training minutes per seed with their mean and standard
deviation, and writes them to ``results-<timestamp>.csv`` and the curves to
``accuracy_vs_minutes-<timestamp>.png`` (validation accuracy against wall-clock training
minutes), both new on every call. ``--ablation`` adds one run (first seed) per technique
switched off, or MixUp switched on; a shorter ablation: ``--seeds 0 --ablation --set
train.epochs=15``. Not part of the test suite: on a 2-core CPU each run takes minutes.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# One change each against the seed run. Test-time augmentation needs no run of its own:
# every run reports its test accuracy without it too ("ACC no TTA").
ABLATIONS = {
    "no flips / rotations": ["augment.flip=false", "augment.rot90=false"],
    "no colour jitter": ["augment.brightness=0", "augment.contrast=0", "augment.saturation=0"],
    "no label smoothing": ["train.label_smoothing=0"],
    "constant learning rate (Adam 1e-3)": ["train.schedule=constant", "train.learning_rate=0.001", "train.optimizer=adam", "train.weight_decay=0"],
    "plain (no residual connections)": ["model.residual=false"],
    "plus MixUp (alpha 0.2)": ["augment.mixup_alpha=0.2"],
}


def run(overrides: list[str]) -> dict:
    from keras_blood.config import load_config
    from keras_blood.train import train

    start = time.perf_counter()
    result = train(load_config(REPO / "configs" / "best.yaml", overrides))
    with open(result.run_dir / "history.csv") as f:
        history = list(csv.DictReader(f))
    m = result.metrics
    return {
        "acc": m["accuracy"],
        "auc": m["auc"],
        "acc_no_tta": m.get("without_tta", {}).get("accuracy", m["accuracy"]),
        "train_min": m["train_seconds"] / 60,
        "total_min": (time.perf_counter() - start) / 60,
        "params": m["params"],
        "curve": [(float(r["elapsed_minutes"]), float(r["val_accuracy"])) for r in history],
        "export": str(result.export_dir),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--ablation", action="store_true", help="also run one seed per technique off")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", type=Path, default=Path("runs/benchmark_best"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    common = [*args.overrides, f"output.runs_dir={args.out / 'runs'}", f"output.export_dir={args.out / 'saved_models'}"]

    plan = {f"seed {seed}": [f"seed={seed}"] for seed in args.seeds}
    if args.ablation:
        plan.update({name: [f"seed={args.seeds[0]}", *changes] for name, changes in ABLATIONS.items()})
    rows = {}
    # Each finished run is appended at once, so an interrupted benchmark keeps what it
    # measured; a new results-<timestamp>.csv per call, so a repeat never overwrites one.
    from keras_blood.folders import new_file

    results = new_file(args.out, "results-", ".csv")
    with open(results, "w", newline="") as f:
        fields = ["run", "acc", "auc", "acc_no_tta", "train_min", "total_min", "params", "export"]
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        for name, changes in plan.items():
            rows[name] = run([*common, *changes])
            writer.writerow({"run": name, **rows[name]})
            f.flush()

    print(f"\n{'run':<38} {'test ACC':>8} {'AUC':>7} {'ACC no TTA':>10} {'train min':>9} {'params':>8}")
    for name, r in rows.items():
        print(f"{name:<38} {r['acc']:8.4f} {r['auc']:7.4f} {r['acc_no_tta']:10.4f} {r['train_min']:9.1f} {r['params']:8d}")
    seeds = [rows[f"seed {s}"] for s in args.seeds]
    # A spread needs two seeds at least; one seed's "± 0" would claim a precision it lacks.
    for key in ("acc", "auc", "acc_no_tta", "train_min") if len(seeds) > 1 else ():
        values = [r[key] for r in seeds]
        print(f"mean over {len(values)} seeds  {key:<10} {statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, r in rows.items():
        minutes, acc = zip(*r["curve"])
        ax.plot(minutes, acc, label=name, alpha=0.9 if name.startswith("seed") else 0.5)
    ax.set_xlabel("training minutes (wall clock)")
    ax.set_ylabel("validation accuracy")
    ax.set_ylim(0.9, 1.0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    curve = results.with_name(results.name.replace("results-", "accuracy_vs_minutes-")).with_suffix(".png")
    fig.savefig(curve, dpi=110)
    print(results)
    print(curve)


if __name__ == "__main__":
    main()
