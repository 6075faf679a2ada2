"""Benchmark: the lab table, how configs/wbc_multilab.yaml does in each lab, and
leave-one-lab-out for configs/wbc_labs.yaml (not part of the tests).

    python benchmarks/labs.py --kaggle DIR --bloodmnist DIR --pbc ../shared/data/pbc-captures/labels.tsv \\
        [--rows both kaggle bloodmnist] [--finetune 100 300 1000] [--reuse both=saved_models/wbc_multilab/1] \\
        [--set key=value ...]
    python benchmarks/labs.py --leave-one-out --kaggle DIR --bloodmnist DIR \\
        --pbc ../shared/data/pbc-captures/labels.tsv \\
        --bionet ../shared/data/labs/bionet_pk/labels.tsv --andrade ../shared/data/labs/leukocytes_andrade/labels.tsv \\
        [--labs kaggle bloodmnist bionet andrade] [--shots 5 10 20] [--reuse-left-out andrade=VERSION] \
        [--set key=value ...] [--few-shot-set key=value ...]

``--leave-one-out`` trains wbc_labs.yaml once per lab with that lab left out
(``data.sources.<lab>=null``) and scores it on that lab (:func:`left_out_images`: never a
test split, never the BCCD fields), zero-shot and after ``adapt`` on the same images; the
mean balanced accuracy over the left-out labs is the figure a lever is chosen on.
``--shots N ...`` then fine-tunes the left-out version on N labelled images a class of those
images (configs/wbc_lab_finetune.yaml, :func:`few_shot`) and scores it on the rest of them;
``--reuse-left-out LAB=VERSION`` takes a left-out version already trained instead of training it
(``--few-shot-set``: overrides of the fine-tune config, e.g. train.epochs, to choose them by).

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
            [
                "data.sources.kaggle=null",
                f"data.sources.bloodmnist={{name: bloodmnist, root: '{args.bloodmnist}'}}",
                *args.data_overrides,
            ],
            "test",
            reports,
        ),
        "pbc160": evaluate_files(version, args.pbc, output_dir=reports),
    }
    figures = {}
    for lab, result in results.items():
        figures[f"{lab}_acc"] = result.metrics["accuracy"]
        figures[f"{lab}_balanced"] = result.metrics["balanced_accuracy"]
    return figures


LOO_CONFIG = REPO / "configs" / "wbc_labs.yaml"
LOO_LABS = ("kaggle", "bloodmnist", "bionet", "andrade")
# Classes only one lab has: left out of data.classes (and of its scoring) when that lab is.
ONLY_IN = {"bloodmnist": ["basophil"]}
FEW_SHOT_CONFIG = REPO / "configs" / "wbc_lab_finetune.yaml"
# A class is scored (in the few-shot columns) on at least this many images left after the draw.
MIN_SCORED = 5


def without_lab(lab: str) -> list[str]:
    """The overrides that leave ``lab`` out of wbc_labs.yaml (and the classes only it has)."""
    from keras_blood.config.loading import load_config

    overrides = [f"data.sources.{lab}=null"]
    if lab in ONLY_IN:
        classes = [c for c in load_config(LOO_CONFIG).data.classes if c not in ONLY_IN[lab]]
        overrides.append(f"data.classes=[{', '.join(classes)}]")
    return overrides


def left_out_images(lab: str, args, folder: Path) -> Path:
    """The images a recipe is scored on with ``lab`` left out, as a list file in ``folder``:
    never a test split, never the BCCD fields. Kaggle: a seeded 250 a class of TRAIN (the
    augmentations of its 277 source cells); BloodMNIST: the PBC captures behind its
    validation rows (its raw files); a lab's own list: its rows outside the test split that
    training draws (the same seed), so that its test split stays unread."""
    import numpy as np

    from keras_blood.config.loading import load_config
    from keras_blood.data.sources.image_folder.listing import list_images, source_config_of, source_listing

    config = load_config(
        LOO_CONFIG,
        [f"data.sources.{name}.root={getattr(args, name)}" for name in LOO_LABS]
        + [o for o in without_lab(lab) if o.startswith("data.classes=")],
    )
    if lab == "bloodmnist":  # the model's classes of the 320 captures (40 a class)
        listing = list_images(args.pbc, config.data.classes, config.data.class_aliases, draw=False, min_classes=1)
        rows = [
            (str(listing.root / file), listing.class_names[label]) for file, label in zip(listing.files, listing.labels)
        ]
    elif lab == "kaggle":
        rng = np.random.default_rng(0)
        rows = []
        for class_folder in sorted(p for p in (args.kaggle / "TRAIN").iterdir() if p.is_dir()):
            files = sorted(class_folder.iterdir())
            rows += [(str(f), class_folder.name) for f in rng.choice(files, min(250, len(files)), replace=False)]
    else:
        # Listed as training lists it (the classes it has, the run's seed): the same test split.
        listing = source_listing(source_config_of(config.data, lab), config.seed)
        rows = [
            (str(listing.root / file), listing.class_names[label])
            for file, label, split in zip(listing.files, listing.labels, listing.splits)
            if split != "test"
        ]
    path = folder / f"{lab}-left-out.tsv"
    path.write_text("file\tlabel\n" + "".join(f"{file}\t{label}\n" for file, label in rows))
    return path


def source_cell(lab: str, file: str) -> str:
    """The image's source cell: the Kaggle TRAIN files are augmentations of a few hundred
    (``_<source>_<n>.jpeg`` in a class folder), so a cell drawn to fine-tune on takes all its
    images out of the scored rest; every other lab's image is a cell of its own."""
    path = Path(file)
    return f"{path.parent.name}/{path.name.split('_')[1]}" if lab == "kaggle" else file


def balanced_scored(metrics: dict, least: int = MIN_SCORED) -> float:
    """Mean recall over the classes with at least ``least`` scored images."""
    recalls = [c["recall"] for c in metrics["per_class"].values() if c["support"] >= least]
    return sum(recalls) / len(recalls) if recalls else float("nan")


def few_shot(lab: str, version: Path, images: Path, args, folder: Path) -> dict[str, dict]:
    """For each N of ``--shots``: N labelled images a class drawn (seeded, each class's cells in
    one shuffled order, so the 5 are among the 10) from the left-out lab's scored images, written
    as class folders, the version fine-tuned on them all (configs/wbc_lab_finetune.yaml) and
    scored on the rest, balanced over the classes with MIN_SCORED or more images left; the
    source version is scored on the same rest. A class with fewer than N + MIN_SCORED images
    gives what leaves MIN_SCORED to score (said, and recorded as ``drawn``)."""
    import random
    import shutil

    from keras_blood.config.loading import load_config
    from keras_blood.evaluation.evaluate_version import evaluate_files
    from keras_blood.training.trainer import train

    cells: dict[str, dict[str, list[str]]] = {}
    for line in images.read_text().splitlines()[1:]:
        file, label = line.split("\t")
        cells.setdefault(label, {}).setdefault(source_cell(lab, file), []).append(file)
    order = {label: sorted(found) for label, found in cells.items()}
    for label, names in order.items():
        random.Random(f"{lab}/{label}").shuffle(names)
    classes = json.loads((version / "assets.extra" / "class_names.json").read_text())
    columns = {}
    for shots in args.shots:
        name = f"{lab}-{shots}shot"
        drawn, rest = {}, []
        for label, names in order.items():
            size = len(names)
            take = min(shots, max(0, size - MIN_SCORED))
            if take < shots:
                print(f"{lab}, {shots}-shot: {label} has {size} cells; {take} drawn, {size - take} left to score")
            drawn[label] = names[:take]
            rest += [(file, label) for cell in names[take:] for file in cells[label][cell]]
            for number, cell in enumerate(names[:take]):
                file = Path(cells[label][cell][0])
                (folder / name / label).mkdir(parents=True, exist_ok=True)
                shutil.copy(file, folder / name / label / f"{number:03d}-{file.name}")
        scored = folder / f"{name}-rest.tsv"
        scored.write_text("file\tlabel\n" + "".join(f"{file}\t{label}\n" for file, label in rest))
        overrides = [
            f"model.weights={version}",
            f"data.root={folder / name}",
            f"data.classes={json.dumps(classes)}",  # a version without basophils keeps its four
            *args.few_shot_overrides,
            f"output.name=loo_{lab}_{shots}shot",
        ]
        start = time.perf_counter()
        tuned = train(load_config(FEW_SHOT_CONFIG, overrides)).export_dir
        minutes = (time.perf_counter() - start) / 60
        reports = folder / "reports"
        after = evaluate_files(tuned, scored, output_dir=reports).metrics
        before = evaluate_files(version, scored, output_dir=reports).metrics
        columns[str(shots)] = {
            "drawn": {label: len(names) for label, names in drawn.items()},
            "scored": after["num_examples"],
            "balanced": balanced_scored(after),
            "zero_shot_on_rest": balanced_scored(before),
            "recall": {c: round(v["recall"], 3) for c, v in after["per_class"].items() if v["support"]},
            "version": str(tuned),
            "minutes": minutes,
        }
        print(f"{lab}, {shots}-shot: {json.dumps(columns[str(shots)])}", flush=True)
    return columns


def leave_one_out(args) -> None:
    """Train the recipe once per lab with that lab left out; score it there, zero-shot and
    after ``adapt`` on the same images (their labels unread), and say how it did in the labs
    it trained on (their validation splits)."""
    from keras_blood.config.loading import load_config
    from keras_blood.evaluation.evaluate_version import evaluate_files
    from keras_blood.serving.request import expand_inputs
    from keras_blood.training.adapt import adapt_version
    from keras_blood.training.trainer import train

    roots = [f"data.sources.{lab}.root={getattr(args, lab)}" for lab in LOO_LABS]
    out = Path(f"labs-leave-one-out-{time.strftime('%Y%m%d-%H%M%S')}.json")
    reused = dict(item.split("=", 1) for item in args.reuse_left_out)
    table = []
    with tempfile.TemporaryDirectory() as tmp:
        for lab in args.labs:
            start = time.perf_counter()
            # Recipes are chosen here, on validation figures: the labs' test splits stay unread.
            overrides = [*roots, *without_lab(lab), "eval.read_test=false", *args.overrides, f"output.name=loo_{lab}"]
            config = load_config(LOO_CONFIG, overrides)
            version = Path(reused[lab]) if lab in reused else train(config).export_dir
            images = left_out_images(lab, args, Path(tmp))
            zero = evaluate_files(version, images, output_dir=Path(tmp) / "reports").metrics
            after = {"balanced_accuracy": None, "per_class": {}}
            # A model that normalises each image by itself (group or layer norm) has no lab
            # statistics for adapt to fit: its row has no adapted figure.
            if getattr(config.model, "norm", "batch") == "batch":
                files = [line.split("\t")[0] for line in images.read_text().splitlines()[1:]]
                adapted = adapt_version(version, expand_inputs(files), [str(images)], args.overrides)
                after = evaluate_files(adapted, images, output_dir=Path(tmp) / "reports").metrics
            metrics = json.loads((version / "assets.extra" / "metrics.json").read_text())
            row = {
                "left_out": lab,
                "n": zero["num_examples"],
                "zero_shot_balanced": zero["balanced_accuracy"],
                "adapted_balanced": after["balanced_accuracy"],
                "recall": {c: round(v["recall"], 3) for c, v in zero["per_class"].items() if v["support"]},
                "adapted_recall": {c: round(v["recall"], 3) for c, v in after["per_class"].items() if v["support"]},
                "confusion": zero["confusion_matrix"],
                "val_by_source": metrics.get("best_val_accuracy_by_source"),
                "version": str(version),
                "shots": few_shot(lab, version, images, args, Path(tmp) / "shots") if args.shots else {},
                "minutes": (time.perf_counter() - start) / 60,
            }
            table.append(row)
            print(f"left out {lab}: {json.dumps(row)}", flush=True)
            out.write_text(json.dumps(table, indent=2))  # row by row: a failed row keeps the others
    shot_heads = "".join(f" balanced, {n}-shot |" for n in args.shots)
    print(
        "\n| left out | images | zero-shot balanced | adapted balanced |"
        f"{shot_heads} recall (zero-shot) | in training: validation accuracy |"
    )
    print("|---|---|---|---|" + "---|" * len(args.shots) + "---|---|")
    for r in table:
        val = ", ".join(f"{k} {v:.3f}" for k, v in (r["val_by_source"] or {}).items())
        recall = ", ".join(f"{k} {v:.2f}" for k, v in r["recall"].items())
        shots = "".join(f" {r['shots'][str(n)]['balanced']:.3f} |" for n in args.shots)
        adapted = "-" if r["adapted_balanced"] is None else f"{r['adapted_balanced']:.3f}"
        print(f"| {r['left_out']} | {r['n']} | {r['zero_shot_balanced']:.3f} | {adapted} |{shots} {recall} | {val} |")
    zero = [r["zero_shot_balanced"] for r in table]
    adapted = [r["adapted_balanced"] for r in table if r["adapted_balanced"] is not None]
    mean_adapted = f"{sum(adapted) / len(adapted):.3f}" if adapted else "-"
    print(f"\nmean over left-out labs: zero-shot {sum(zero) / len(zero):.3f}, adapted {mean_adapted}")
    print(f"written: {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kaggle", type=Path, required=True, help="the Kaggle images folder (TRAIN/, TEST/)")
    parser.add_argument("--bloodmnist", type=Path, required=True, help="the folder of bloodmnist.npz")
    parser.add_argument("--pbc", type=Path, required=True, help="pbc-captures/labels.tsv, or a folder of class folders")
    parser.add_argument(
        "--leave-one-out",
        action="store_true",
        help="configs/wbc_labs.yaml once per lab with it left out (needs --bionet and --andrade)",
    )
    parser.add_argument("--bionet", type=Path, help="bionet_pk/labels.tsv (--leave-one-out)")
    parser.add_argument("--andrade", type=Path, help="leukocytes_andrade/labels.tsv (--leave-one-out)")
    parser.add_argument(
        "--labs", nargs="+", default=list(LOO_LABS), choices=LOO_LABS, help="the labs to leave out in turn"
    )
    parser.add_argument(
        "--shots",
        type=int,
        nargs="*",
        default=[],
        help="--leave-one-out: fine-tune each left-out version on N labelled images a class of its lab (few_shot)",
    )
    parser.add_argument(
        "--reuse-left-out",
        action="append",
        default=[],
        metavar="LAB=VERSION",
        help="--leave-one-out: the version trained with LAB left out, instead of training it",
    )
    parser.add_argument(
        "--few-shot-set",
        dest="few_shot_overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an override of configs/wbc_lab_finetune.yaml (--shots)",
    )
    parser.add_argument(
        "--rows", nargs="+", default=["both", "kaggle", "bloodmnist"], choices=["both", "kaggle", "bloodmnist"]
    )
    parser.add_argument(
        "--finetune",
        type=int,
        nargs="*",
        default=[100, 300, 1000],
        help="Kaggle TRAIN images to fine-tune the bloodmnist row on (none: no fine-tuning)",
    )
    parser.add_argument("--reuse", action="append", default=[], metavar="ROW=VERSION", help="score this version as ROW")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    if args.leave_one_out:
        if args.bionet is None or args.andrade is None:
            parser.error("--leave-one-out needs --bionet and --andrade")
        for item in args.reuse_left_out:
            if item.split("=", 1)[0] not in LOO_LABS or "=" not in item:
                parser.error(f"--reuse-left-out {item}: expected LAB=VERSION, LAB one of {', '.join(LOO_LABS)}")
        return leave_one_out(args)
    if args.shots or args.reuse_left_out:
        parser.error("--shots and --reuse-left-out are for --leave-one-out")
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
            tuned = [
                *rows["kaggle"],
                f"data.sources.kaggle.train_examples={count}",
                f"model.weights={versions['bloodmnist']}",
            ]
            version, minutes = train_row([*tuned, *FINETUNE, *args.overrides, f"output.name=labs_finetune_{count}"])
            table.append({"row": name, "train_min": minutes, **score(version, args, Path(tmp))})
            print(f"{name}: {json.dumps(table[-1])}", flush=True)
    columns = ["row", *(f"{lab}_{kind}" for lab in LABS for kind in ("acc", "balanced")), "train_min"]
    out = Path(f"labs-{time.strftime('%Y%m%d-%H%M%S')}.csv")
    with out.open("w", newline="") as file:
        writer = csv.DictWriter(file, columns)
        writer.writeheader()
        writer.writerows(table)
    print(
        "\n| trained on | Kaggle TEST acc | balanced | BloodMNIST test acc | balanced "
        "| PBC-160 acc | balanced | train min |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for entry in table:
        cells = [f"{entry[c]:.3f}" for c in columns[1:-1]] + [f"{entry['train_min']:.1f}"]
        print(f"| {entry['row']} | " + " | ".join(cells) + " |")
    print(f"\nwritten: {out}")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
