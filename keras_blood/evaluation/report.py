"""The test report: what a training run and ``python -m keras_blood.evaluate`` both write
about a model's test probabilities, and temperature calibration on the validation split.

:func:`write_report` writes ``metrics.json``, ``confusion_matrix.png`` and
``reliability.png`` into a folder and prints the summary and per-class table; each
caller adds its own (learning curves for a run; per-class CSV, ROC curves and mistakes for
an evaluation).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import keras
import numpy as np

from keras_blood.evaluation.calibration import fit_temperature
from keras_blood.evaluation.metrics import calibration_metrics, per_class_table, summary_line
from keras_blood.evaluation.plots import plot_confusion_matrix, plot_reliability_diagram
from keras_blood.models.temperature import with_temperature


def best_epoch_summary(history: dict[str, list[float]]) -> dict[str, Any]:
    """The epoch a checkpoint kept (lowest val_loss) and its validation figures."""
    best = min(range(len(history["val_loss"])), key=history["val_loss"].__getitem__)
    return {
        "epochs_run": len(history["loss"]),
        "best_epoch": best + 1,
        "best_val_loss": float(history["val_loss"][best]),
        "best_val_accuracy": float(history["val_accuracy"][best]),
    }


def calibrate(model, val_inputs, val_labels, test_labels, test_probs):
    """eval.calibration = temperature: T fitted on the validation split and folded into the
    model. Returns that model, the record for metrics.json (T; accuracy, ECE, Brier and NLL
    before and after, on validation and test) and its test probabilities."""
    val_probs = model.predict(val_inputs, verbose=0)
    temperature = fit_temperature(val_labels, val_probs)
    calibrated = with_temperature(model, temperature)
    scale = calibrated.get_layer("probabilities")  # the exported layer, on what was predicted
    after = {split: keras.ops.convert_to_numpy(scale(p)) for split, p in (("val", val_probs), ("test", test_probs))}
    record: dict[str, Any] = {"method": "temperature", "temperature": temperature, "fitted_on": "val"}
    for split, labels, before in (("val", val_labels, val_probs), ("test", test_labels, test_probs)):
        labels = np.asarray(labels).reshape(-1)
        record[split] = {
            name: {"accuracy": float(np.mean(p.argmax(1) == labels)), **calibration_metrics(labels, p)}
            for name, p in (("before", before), ("after", after[split]))
        }
    test = record["test"]
    print(
        f"Temperature {temperature:.4f} (fitted on val): test ECE {test['before']['ece']:.4f} -> "
        f"{test['after']['ece']:.4f}, NLL {test['before']['nll']:.4f} -> {test['after']['nll']:.4f}",
        flush=True,
    )
    return calibrated, record, after["test"]


def write_report(
    folder: Path, metrics: dict[str, Any], labels, curves: dict[str, Any], class_names: list[str], title: str, heading: str
) -> None:
    """``metrics.json``, the confusion matrix and the reliability diagram (``curves``: named
    test probabilities) in ``folder``, then ``heading: summary`` and the per-class table printed."""
    (folder / "metrics.json").write_text(json.dumps(metrics, indent=2))
    plot_confusion_matrix(metrics["confusion_matrix"], class_names, folder / "confusion_matrix.png", title)
    plot_reliability_diagram(labels, curves, folder / "reliability.png", title)
    print(f"\n{heading}: {summary_line(metrics)}")
    print(per_class_table(metrics))
