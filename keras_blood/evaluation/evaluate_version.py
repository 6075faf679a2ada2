"""Evaluate an exported model version again, on a split of the data its config names.

    python -m keras_blood.evaluate saved_models/dropout03/1 [--split test] [--set data.root=DIR ...]

The version's recorded config (``assets.extra/config.yaml``, ``--set`` overrides applied)
says which data to load, with the same seed and ``data.max_examples`` slice as the
training run; the exported ``serving_default`` signature, exactly what a server runs,
makes the predictions. The report goes to a new folder,
``<output-dir>/<name>-v<version>-<split>-<timestamp>/``:

    metrics.json        accuracy, macro precision / recall / F1, MedMNIST AUC, calibration
                        (ECE in 15 bins, Brier score, NLL), per class
    per_class.csv       class, precision, recall, f1, support, auc (one-vs-rest)
    confusion_matrix.png  counts and row-normalised
    roc_curves.png      one-vs-rest ROC curve per class
    reliability.png     accuracy against confidence (the ECE's bins)
    mistakes.png        the most confident mistakes: image, true and predicted class, probability
    gradcam_mistakes.png  the same mistakes with the Grad-CAM map of the predicted class
                        (:mod:`keras_blood.explain`); a version without model.keras gets
                        gradcam_mistakes.txt saying why instead

The last line printed is the report folder's path.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from keras_blood.config.loading import load_config
from keras_blood.config.paths import version_config_file
from keras_blood.data import DataBundle, load_data
from keras_blood.data.lab_data import lab_listing, listing_notes, pooled_line, pooled_split_folders
from keras_blood.data.sources.image_folder.listing import Listing
from keras_blood.errors import ConfigError, DataError
from keras_blood.evaluation.gradcam import gradcam_panel
from keras_blood.evaluation.metrics import classification_metrics, one_vs_rest_aucs
from keras_blood.evaluation.plots import plot_image_grid, plot_roc_curves
from keras_blood.evaluation.report import by_source, write_report
from keras_blood.files import new_folder
from keras_blood.serving.predict import prepared_files, unreadable
from keras_blood.serving.version import load_version

MISTAKES_SHOWN = 25
# Training reports metrics to 4 decimals; a re-evaluation that differs by more is a real difference.
TOLERANCE = 5e-4
COMPARED = ("accuracy", "precision_macro", "recall_macro", "f1_macro", "auc", "ece", "brier", "nll")


@dataclass
class EvaluateResult:
    report_dir: Path
    metrics: dict[str, Any]
    labels: Any  # int [N], in the split's order
    probs: Any  # float [N, classes]


def evaluate(
    version_dir: str | Path,
    overrides: Sequence[str] = (),
    split: str = "test",
    output_dir: Path = Path("reports"),
    data: DataBundle | None = None,
) -> EvaluateResult:
    """Evaluate ``version_dir`` on ``split`` of its recorded config's data (``overrides``
    applied; ``data``: that data, already loaded)."""
    version_dir = Path(version_dir)
    recorded_config = version_config_file(version_dir)
    config = load_config(recorded_config, list(overrides))

    config.data.check_split(split)
    data = data or load_data(config.data, config.seed)
    if split not in data.splits or len(data.splits[split]) == 0:
        raise DataError(f"--split {split!r}: data source {data.name!r} has splits {sorted(data.splits)}")

    version = load_version(version_dir)
    if data.class_names != version.class_names:
        raise DataError(f"{version_dir} predicts {version.class_names} but the data has classes {data.class_names}")
    expected = tuple(version.serve.structured_input_signature[1]["pixels"].shape[1:])
    if data.image_shape != expected:
        raise ConfigError(
            f"the data gives {data.image_shape} images but {version_dir} takes {expected}; check data.image_size"
        )

    images, labels = data.splits[split].images, data.splits[split].labels
    print(f"Evaluating {version_dir} on {data.name} {split} ({len(labels)} images) ...", flush=True)
    # Against the training run's figures only where it is the data that run read.
    same = load_config(recorded_config).data == config.data
    result = _report(version, version_dir, config, images, labels, split, output_dir, same_data=same)
    if data.source_names:  # data.sources: each source's figures too
        result.metrics["sources"] = by_source(data.splits[split], result.probs, data)
        (result.report_dir / "metrics.json").write_text(json.dumps(result.metrics, indent=2))
    return result


def evaluate_files(
    version_dir: str | Path,
    root: str | Path,
    overrides: Sequence[str] = (),
    output_dir: Path = Path("reports"),
    listing: Listing | None = None,
    max_pixels: int | None = None,
) -> EvaluateResult:
    """Evaluate ``version_dir`` on another lab's images: ``root`` a folder of class folders
    (or of split folders, pooled into one set and said so) or a list file
    (:mod:`keras_blood.data.sources.image_folder.listing`). Each file is prepared from the
    raw file by the version's recorded recipe, as ``predict`` and ``serving_bytes`` do.
    Classes are matched by name and ``data.class_aliases``; the data's classes that the
    model lacks are left out, and the model's classes that the data lacks are named.

    A file that is not read (not an image, or more than ``max_pixels`` pixels by its header,
    default ``data.max_pixels``) is a DataError naming it, or with ``data.skip_unreadable``
    left out and counted."""
    version_dir = Path(version_dir)
    config = load_config(version_config_file(version_dir), list(overrides))
    listing = listing or lab_listing(version_dir, root, config)
    max_pixels = config.data.max_pixels if max_pixels is None else max_pixels
    pooled = pooled_split_folders(root, listing)
    if pooled:
        print(pooled_line(root, pooled), flush=True)
    version = load_version(version_dir)
    paths = [str(listing.root / file) for file in listing.files.tolist()]
    print(f"Evaluating {version_dir} on {root} ({len(paths)} images) ...", flush=True)
    entries = [(path, unreadable(path, max_pixels, "--max-pixels")) for path in paths]
    images, bad = [], []
    for index, (pixels, error) in enumerate(prepared_files(entries, version.preparation)):
        if pixels is None:
            bad.append((index, error))
        else:
            images.append(pixels)
    if bad:
        listing = _without_unreadable(listing, paths, bad, root, config.data.skip_unreadable)
    return _report(
        version,
        version_dir,
        config,
        np.stack(images),
        listing.labels,
        Path(root).name,
        output_dir,
        {"data": str(root), **listing_notes(listing, pooled)},
    )


def _without_unreadable(listing: Listing, paths: list[str], bad: list[tuple[int, str]], root, skip: bool) -> Listing:
    """``listing`` without the files in ``bad`` (index, why), counted; a DataError naming
    the first unless ``skip`` (data.skip_unreadable)."""
    first, why = bad[0]
    if not skip:
        raise DataError(
            f"{paths[first]}: not a readable image ({why}); {len(bad)} such file(s) in all. "
            f"Remove them from {root} or pass --set data.skip_unreadable=true"
        )
    if len(bad) == len(paths):
        raise DataError(f"{root}: none of its {len(paths)} files is a readable image (e.g. {paths[first]}: {why})")
    print(
        f"warning: skipped {len(bad)} of {len(paths)} files that are not readable images "
        f"(e.g. {Path(paths[first]).name})",
        file=sys.stderr,
        flush=True,
    )
    keep = np.setdiff1d(np.arange(len(paths)), [index for index, _ in bad])
    return dataclasses.replace(
        listing,
        files=listing.files[keep],
        labels=listing.labels[keep],
        groups=listing.groups[keep],
        splits=listing.splits[keep],
        left_out={**listing.left_out, "unreadable files": len(bad)},
    )


def _report(
    version,
    version_dir: Path,
    config,
    images,
    labels,
    what: str,
    output_dir: Path,
    extra: dict[str, Any] | None = None,
    same_data: bool = False,
) -> EvaluateResult:
    """Classify ``images`` (prepared pixels) with ``serving_default`` and write the report:
    :func:`~keras_blood.evaluation.report.write_report`'s files (as a training run's test
    report) and this command's own (per-class CSV, ROC curves, the mistakes)."""
    probs = served_probabilities(version, images, config.train.batch_size)
    names = list(version.class_names)
    metrics = classification_metrics(labels, probs, names)
    metrics.update(split=what, model_version=str(version_dir), **(extra or {}))

    title = f"{version.name} v{version.number} {what}"
    report_dir = new_folder(output_dir, f"{version.name}-v{version.number}-{what}-")
    write_per_class_csv(metrics, one_vs_rest_aucs(labels, probs), report_dir / "per_class.csv")
    plot_roc_curves(labels, probs, names, report_dir / "roc_curves.png", title)
    print(plot_mistakes(version_dir, config, images, labels, probs, names, report_dir, title))
    write_report(report_dir, metrics, labels, {"served": probs}, names, title, title)
    for line in data_notes(metrics, version, extra, same_data):
        print(line)
    return EvaluateResult(report_dir, metrics, labels, probs)


def served_probabilities(version, images, batch: int):
    """``serving_default``'s probabilities for ``images``, ``batch`` at a time."""
    return np.concatenate(
        [
            version.serve(pixels=tf.constant(images[i : i + batch]))["probabilities"].numpy()
            for i in range(0, len(images), batch)
        ]
    )


def plot_mistakes(version_dir: Path, config, images, labels, probs, names: list[str], report_dir: Path, title: str):
    """``mistakes.png`` and ``gradcam_mistakes.png``: the most confident mistakes, and their
    Grad-CAM maps. Returns the line saying what the latter holds."""
    shown = most_confident_mistakes(labels, probs, MISTAKES_SHOWN)
    predictions = probs.argmax(1)
    captions = [f"#{i} true {names[labels[i]]}\npred {names[predictions[i]]} ({probs[i].max():.2f})" for i in shown]
    heading = f"{title}: most confident mistakes"
    plot_image_grid(images[shown], captions, report_dir / "mistakes.png", heading)
    return gradcam_panel(version_dir, config, images[shown], captions, report_dir / "gradcam_mistakes.png", heading)


def data_notes(metrics: dict[str, Any], version, extra: dict[str, Any] | None, same_data: bool) -> list[str]:
    """What the figures are compared with: the training run's, where it is the data that
    run read; for another lab's images, what was left out."""
    if same_data:
        return [compare_with_training(metrics, version.extra / "metrics.json")]
    if extra is None:
        return ["The data differs from the training run's (--set data...); nothing to compare."]
    notes = []
    if extra["left_out"]:
        notes.append("Left out: " + "; ".join(f"{what} ({count})" for what, count in extra["left_out"].items()))
    if extra["classes_without_images"]:
        notes.append(
            "The model's classes without images here (left out of balanced accuracy): "
            f"{extra['classes_without_images']}"
        )
    return notes


def most_confident_mistakes(labels, probs, count: int):
    """Indices of wrong predictions, the most confident first."""
    predictions = probs.argmax(1)
    wrong = np.flatnonzero(predictions != labels)
    return wrong[np.argsort(-probs[wrong, predictions[wrong]], kind="stable")][:count]


def write_per_class_csv(metrics: dict[str, Any], aucs: list[float], path: Path) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["class", "precision", "recall", "f1", "support", "auc"])
        for (name, row), auc in zip(metrics["per_class"].items(), aucs):
            writer.writerow(
                [
                    name,
                    f"{row['precision']:.6f}",
                    f"{row['recall']:.6f}",
                    f"{row['f1-score']:.6f}",
                    int(row["support"]),
                    "" if math.isnan(auc) else f"{auc:.6f}",
                ]
            )


def compare_with_training(metrics: dict[str, Any], recorded_path: Path) -> str:
    """One line: do these figures equal those the training run recorded for this split?"""
    try:
        recorded = json.loads(recorded_path.read_text())
    except (OSError, ValueError):
        return "The training run's metrics are not recorded with this version; nothing to compare."
    if (recorded.get("split"), recorded.get("num_examples")) != (metrics["split"], metrics["num_examples"]):
        return (
            f"Training recorded metrics for {recorded.get('split')} (n={recorded.get('num_examples')}), "
            f"not this {metrics['split']} set (n={metrics['num_examples']}); nothing to compare."
        )
    gaps = {key: _gap(metrics[key], recorded[key]) for key in COMPARED if key in recorded}
    worst = max(gaps, key=gaps.__getitem__)
    verdict = "match" if all(gap <= TOLERANCE for gap in gaps.values()) else "DIFFER from"
    return f"These figures {verdict} the training run's (largest gap: {worst} {gaps[worst]:.6f})."


def _gap(a: float, b: float) -> float:
    # AUC is NaN on both sides when a tiny slice lacks a class: that is agreement.
    if math.isnan(a) or math.isnan(b):
        return 0.0 if math.isnan(a) and math.isnan(b) else math.inf
    return abs(a - b)
