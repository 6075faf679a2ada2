"""Benchmark: the best BloodMNIST 28x28 recipe over several seeds, plus optional ablations.

    python benchmarks/bloodmnist_best.py --set data.root=DIR [--seeds 1 2 3] [--ablation]

Trains ``configs/best.yaml`` once per seed (each a full ``python -m keras_blood.train`` run that
reads the test split once, at the end), then prints test ACC / AUC, ACC without
test-time augmentation, an ensemble's members' ACC alone (``--set train.ensemble=2``)
and training minutes per seed with their mean and standard deviation, and writes them to
``results-<timestamp>.csv`` and the curves to ``accuracy_vs_minutes-<timestamp>.png``
(validation accuracy against wall-clock training minutes, each run's test ACC as a
point), both new on every call. Last, from the seed runs' exported models: the test
images every run gets wrong, and the ACC of all runs averaged (``--pool
results-<timestamp>.csv`` recomputes just these, and draws the curves of an interrupted
benchmark). ``--ablation`` adds one run (first seed) per technique switched off, or
MixUp switched on; a shorter ablation: ``--seeds 0 --ablation --set train.epochs=15``.
``--throughput`` trains nothing to the end: it times training steps of the configured
network on random batches and prints images/s and the seconds a train epoch would take,
to price a change (``--set model.upsample=2``) before spending a run on it.
Not part of the test suite: on a 2-core CPU each run takes minutes.
"""

from __future__ import annotations

import argparse
import collections
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
    "constant learning rate (Adam 1e-3)": [
        "train.schedule=constant",
        "train.learning_rate=0.001",
        "train.optimizer=adam",
        "train.weight_decay=0",
    ],
    "plain (no residual connections)": ["model.residual=false"],
    "plus MixUp (alpha 0.2)": ["augment.mixup_alpha=0.2"],
}


def run(overrides: list[str]) -> dict:
    from keras_blood.config.loading import load_config
    from keras_blood.training.trainer import train

    start = time.perf_counter()
    result = train(load_config(REPO / "configs" / "best.yaml", overrides))
    return {
        **summarise(result.run_dir),
        "total_min": (time.perf_counter() - start) / 60,
        "export": str(result.export_dir),
    }


def throughput(overrides: list[str], steps: int = 25, warmup: int = 5) -> None:
    """Training steps alone (no input pipeline, no validation) of best.yaml's network,
    built and compiled as the Task does (keras_blood.training.task), on one random batch; the first ``warmup`` steps
    (tracing) are not timed."""
    import numpy as np

    from keras_blood.config.loading import load_config
    from keras_blood.training.task import build, compile_for_training

    config = load_config(REPO / "configs" / "best.yaml", overrides)
    batch, classes, train_images = config.train.batch_size, 8, 11_959  # BloodMNIST train split
    model = build(config, (*config.data.model_size, 3), classes)
    compile_for_training(model, config, classes, steps_per_epoch=-(-train_images // batch))
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (batch, *config.data.model_size, 3)).astype("float32")
    y = np.eye(classes, dtype="float32")[rng.integers(0, classes, batch)]
    for _ in range(warmup):
        model.train_on_batch(x, y)
    start = time.perf_counter()
    for _ in range(steps):
        model.train_on_batch(x, y)
    rate = steps * batch / (time.perf_counter() - start)
    precision = "bfloat16" if config.train.mixed_precision else "float32"
    print(
        f"{' '.join(overrides) or 'best.yaml'}: {model.count_params():,} params, {precision}, "
        f"{rate:.0f} images/s in training steps = {train_images / rate:.1f} s per train epoch, "
        f"{config.train.epochs * train_images / rate / 60:.1f} min for {config.train.epochs} epochs "
        "(steps alone: a run adds its input pipeline and validation)"
    )


def summarise(run_dir: Path) -> dict:
    """One finished run's figures, from what it wrote: metrics.json and its history CSVs."""
    import json

    m = json.loads((Path(run_dir) / "metrics.json").read_text())
    # One history per ensemble member, on one clock: the curve runs on across members.
    history = []
    for path in Path(run_dir).glob("history*.csv"):
        with open(path) as f:
            history += list(csv.DictReader(f))
    history.sort(key=lambda row: float(row["elapsed_minutes"]))
    members = m.get("members", [])
    return {
        "acc": m["accuracy"],
        "auc": m["auc"],
        "acc_no_tta": m.get("without_tta", {}).get("accuracy", m["accuracy"]),
        "tta": "without_tta" in m,
        # An ensemble's members alone, mean (a single model: itself).
        "acc_member": sum(x["accuracy"] for x in members) / len(members) if members else m["accuracy"],
        "train_min": m["train_seconds"] / 60,
        "params": m["params"],
        "curve": [(float(r["elapsed_minutes"]), float(r["val_accuracy"])) for r in history],
        "run_dir": str(run_dir),
    }


def plot_curves(rows: dict[str, dict], path: Path) -> None:
    """Validation accuracy of each run against wall-clock training minutes, with the
    run's test ACC (read once, at the end) as a point, and the goal and budget drawn in."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, r in rows.items():
        minutes, acc = zip(*r["curve"])
        (line,) = ax.plot(
            minutes, acc, label=f"{name}: validation (one view)", alpha=0.9 if name.startswith("seed") else 0.5
        )
        ax.plot(
            r["train_min"],
            r["acc"],
            "o",
            color=line.get_color(),
            label=f"{name}: test ACC {r['acc']:.4f}" + (" (TTA)" if r["tta"] else ""),
        )
    ax.axhline(0.990, color="black", linestyle="--", linewidth=0.8, label="goal: test ACC 0.990")
    ax.axvline(30, color="grey", linestyle=":", linewidth=0.8, label="budget: 30 min")
    ax.set_xlabel("training minutes (wall clock)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0.94, 1.0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right", ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def pooled(exports: list[str], out: Path) -> dict:
    """What the seed runs say together, from their exported models on the test split:
    how many test images every run gets wrong (and how many of those every run puts in
    the same wrong class: the ones more networks of this kind are least likely to fix),
    shown in ``wrong_in_every_run-<timestamp>.png``, and the accuracy of averaging all
    runs' probabilities (the ensemble the runs make)."""
    import numpy as np

    from keras_blood.config.loading import load_config
    from keras_blood.data import load_data
    from keras_blood.evaluation.evaluate_version import evaluate
    from keras_blood.evaluation.metrics import classification_metrics
    from keras_blood.evaluation.plots import plot_image_grid
    from keras_blood.files import new_file

    results = [evaluate(path, output_dir=out / "reports") for path in exports]
    labels = results[0].labels
    names = results[0].metrics["class_names"]
    predicted = np.stack([r.probs.argmax(1) for r in results])
    wrong = predicted != labels
    always_wrong = np.flatnonzero(wrong.all(axis=0))
    same_wrong_class = wrong.all(axis=0) & (predicted == predicted[0]).all(axis=0)
    mean_probs = np.mean([r.probs for r in results], axis=0)
    mean = classification_metrics(labels, mean_probs, names)

    config = load_config(Path(exports[0]) / "assets.extra" / "config.yaml")
    images = load_data(config.data, config.seed).splits["test"].images
    captions = [
        f"#{i} true {names[labels[i]]}\npred {names[mean_probs[i].argmax()]} ({mean_probs[i].max():.2f})"
        for i in always_wrong
    ]
    grid = plot_image_grid(
        images[always_wrong],
        captions,
        new_file(out, "wrong_in_every_run-", ".png"),
        f"test images all {len(results)} runs get wrong (prediction: the runs averaged)",
        columns=8,
    )
    return {
        "runs": len(results),
        "wrong_in_every_run": len(always_wrong),
        "wrong_in_some_run": int(wrong.any(axis=0).sum()),
        "same_wrong_class_in_every_run": int(same_wrong_class.sum()),
        "their_confusions": collections.Counter(
            f"{names[t]} -> {names[q]}" for t, q in zip(labels[same_wrong_class], predicted[0][same_wrong_class])
        ).most_common(),
        "test_images": len(labels),
        "averaged_acc": mean["accuracy"],
        "averaged_auc": mean["auc"],
        "grid": grid,
    }


def print_pooled(p: dict) -> None:
    n = p["test_images"]
    print(
        f"test images wrong in every one of the {p['runs']} seed runs: {p['wrong_in_every_run']} "
        f"({p['same_wrong_class_in_every_run']} of them in the same wrong class every time; "
        f"ACC if those {p['wrong_in_every_run']} stay wrong: at most {1 - p['wrong_in_every_run'] / n:.4f}); "
        f"wrong in at least one: {p['wrong_in_some_run']}"
    )
    print("  as true -> predicted: " + ", ".join(f"{pair} {count}" for pair, count in p["their_confusions"]))
    print(f"all {p['runs']} seed runs averaged: test ACC {p['averaged_acc']:.4f}, AUC {p['averaged_auc']:.4f}")
    print(f"the images wrong in every run: {p['grid']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--ablation", action="store_true", help="also run one seed per technique off")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", type=Path, default=Path("runs/benchmark_best"))
    parser.add_argument(
        "--pool", type=Path, metavar="RESULTS_CSV", help="only the pooled figures, from a finished benchmark's exports"
    )
    parser.add_argument("--throughput", action="store_true", help="only time training steps (no run)")
    args = parser.parse_args()
    if args.throughput:
        throughput(args.overrides)
        return
    if args.pool:
        with open(args.pool) as f:
            finished = list(csv.DictReader(f))
        print_pooled(pooled([row["export"] for row in finished if row["run"].startswith("seed ")], args.pool.parent))
        # An interrupted benchmark never drew its curves: draw them from the runs it finished.
        curve = args.pool.with_name(args.pool.name.replace("results-", "accuracy_vs_minutes-")).with_suffix(".png")
        if not curve.exists() and all(row.get("run_dir") for row in finished):
            plot_curves({row["run"]: summarise(row["run_dir"]) for row in finished}, curve)
            print(curve)
        return
    args.out.mkdir(parents=True, exist_ok=True)
    common = [
        *args.overrides,
        f"output.runs_dir={args.out / 'runs'}",
        f"output.publish_dir={args.out / 'saved_models'}",
    ]

    plan = {f"seed {seed}": [f"seed={seed}"] for seed in args.seeds}
    if args.ablation:
        plan.update({name: [f"seed={args.seeds[0]}", *changes] for name, changes in ABLATIONS.items()})
    rows = {}
    # Each finished run is appended at once, so an interrupted benchmark keeps what it
    # measured; a new results-<timestamp>.csv per call, so a repeat never overwrites one.
    from keras_blood.files import new_file

    results = new_file(args.out, "results-", ".csv")
    with open(results, "w", newline="") as f:
        fields = [
            "run",
            "acc",
            "auc",
            "acc_no_tta",
            "acc_member",
            "train_min",
            "total_min",
            "params",
            "export",
            "run_dir",
        ]
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        for name, changes in plan.items():
            rows[name] = run([*common, *changes])
            writer.writerow({"run": name, **rows[name]})
            f.flush()

    print(
        f"\n{'run':<38} {'test ACC':>8} {'AUC':>7} {'ACC no TTA':>10} {'ACC member':>10} {'train min':>9} {'params':>8}"
    )
    for name, r in rows.items():
        print(
            f"{name:<38} {r['acc']:8.4f} {r['auc']:7.4f} {r['acc_no_tta']:10.4f} {r['acc_member']:10.4f}"
            f" {r['train_min']:9.1f} {r['params']:8d}"
        )
    seeds = [rows[f"seed {s}"] for s in args.seeds]
    # A spread needs two seeds at least; one seed's "± 0" would claim a precision it lacks.
    for key in ("acc", "auc", "acc_no_tta", "acc_member", "train_min") if len(seeds) > 1 else ():
        values = [r[key] for r in seeds]
        print(
            f"mean over {len(values)} seeds  {key:<10} {statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"
        )

    if len(seeds) > 1:
        print_pooled(pooled([r["export"] for r in seeds], args.out))

    curve = results.with_name(results.name.replace("results-", "accuracy_vs_minutes-")).with_suffix(".png")
    plot_curves(rows, curve)
    print(results)
    print(curve)


if __name__ == "__main__":
    main()
