"""The test split, scored (:func:`score_test_split`, once per training run), and the test
report that a training run and ``python -m keras_blood.evaluate`` both write; temperature
calibration on the validation split.

:func:`write_report` writes ``metrics.json``, ``confusion_matrix.png`` and
``reliability.png`` into a folder and prints the summary and per-class table; each
caller adds its own (learning curves for a run; per-class CSV, ROC curves and mistakes for
an evaluation).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras
import numpy as np

from keras_blood.config.schema import Config
from keras_blood.data import DataBundle
from keras_blood.evaluation.calibration import fit_temperature
from keras_blood.evaluation.metrics import calibration_metrics, classification_metrics, per_class_table, summary_line
from keras_blood.evaluation.plots import plot_confusion_matrix, plot_reliability_diagram
from keras_blood.models import average_models, with_temperature, with_tta

# Said where a run has no held-out split: what it kept, and where its figures come from instead.
NO_VALIDATION = "the last epoch (no validation split to choose one on: data.val_fraction 0)"
NO_TEST_SPLIT = (
    "No held-out test split (data.test_fraction 0: every image trained the model), so no test figures; "
    "score the version on other labelled images: python -m keras_blood.evaluate VERSION --data DIR"
)
TEST_NOT_READ = (
    "The test split is held out and not read (eval.read_test false), so no test figures; "
    "score the recipe chosen with eval.read_test=true"
)
# A run without test figures, by what was held out (metrics.json's "held_out"): what it prints.
UNTESTED = {"none": NO_TEST_SPLIT, "not read": TEST_NOT_READ}


def best_epoch_summary(history: dict[str, list[float]], key: str | None = "val_loss") -> dict[str, Any]:
    """The epoch a checkpoint kept (lowest ``key``: Config.selection_key) and its validation
    figures; with data.sources, each source's too (``val_<source>_accuracy``). ``key`` None
    (no validation split): the last epoch, kept as it is."""
    if key is None:
        return {"epochs_run": len(history["loss"]), "best_epoch": len(history["loss"]), "kept": NO_VALIDATION}
    best = min(range(len(history[key])), key=history[key].__getitem__)
    summary = {
        "epochs_run": len(history["loss"]),
        "best_epoch": best + 1,
        "best_val_loss": float(history["val_loss"][best]),
        "best_val_accuracy": float(history["val_accuracy"][best]),
    }
    per_source = {
        k[4:].removesuffix("_accuracy"): float(v[best])
        for k, v in history.items()
        if k.startswith("val_") and k.endswith("_accuracy") and k != "val_accuracy"
    }
    if per_source:
        summary["best_val_sources_accuracy"] = per_source.pop("sources")  # their mean
        summary["best_val_accuracy_by_source"] = per_source
    return summary


def by_source(split, probs, data: DataBundle) -> dict[str, dict[str, Any]]:
    """data.sources: each source's own figures on ``split`` (its rows of ``probs``), printed
    a line each."""
    figures = {}
    for index, name in enumerate(data.source_names):
        rows = split.source == index
        found = classification_metrics(split.labels[rows], probs[rows], data.class_names)
        figures[name] = {key: found[key] for key in ("num_examples", "accuracy", "balanced_accuracy", "f1_macro")}
        f = figures[name]
        print(
            f"Test, source {name}: acc {f['accuracy']:.4f}  balanced {f['balanced_accuracy']:.4f}  "
            f"F1 {f['f1_macro']:.4f}  (n={f['num_examples']})",
            flush=True,
        )
    return figures


def calibrate(model, val_inputs, val_labels, test_labels, test_probs):
    """eval.calibration = temperature: T fitted on the validation split and folded into the
    model. Returns that model, the record for metrics.json (T; accuracy, ECE, Brier and NLL
    before and after, on validation and test) and its test probabilities."""
    val_probs = model.predict(val_inputs, verbose=0)
    temperature = fit_temperature(val_labels, val_probs)
    calibrated = with_temperature(model, temperature)
    scale = calibrated.get_layer("probabilities")  # the exported layer, on what was predicted
    after = {split: scale(p).numpy() for split, p in (("val", val_probs), ("test", test_probs))}
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
    folder: Path,
    metrics: dict[str, Any],
    labels,
    curves: dict[str, Any],
    class_names: list[str],
    title: str,
    heading: str,
) -> None:
    """``metrics.json``, the confusion matrix and the reliability diagram (``curves``: named
    test probabilities) in ``folder``, then ``heading: summary`` and the per-class table printed."""
    (folder / "metrics.json").write_text(json.dumps(metrics, indent=2))
    plot_confusion_matrix(metrics["confusion_matrix"], class_names, folder / "confusion_matrix.png", title)
    plot_reliability_diagram(labels, curves, folder / "reliability.png", title)
    print(f"\n{heading}: {summary_line(metrics)}")
    print(per_class_table(metrics))


def score_test_split(
    members: list[keras.Model],
    histories: list[dict[str, list[float]]],
    inputs: Callable[[str], Any],
    data: DataBundle,
    config: Config,
    seeds: list[int],
):
    """Where the test split is scored, once per run: the exported model (ensemble average,
    TTA and calibration inside), its test metrics with what TTA and averaging each add,
    measured, and its test probabilities (named; before calibration too) for the
    reliability diagram. ``inputs(split)``: the split's tf.data pipeline; ``histories``: each
    member's per-epoch record; ``seeds``: the members' seeds."""
    model = average_models(members)
    model_for_test = with_tta(model, config.eval.tta)
    key = config.selection_key if len(data.splits.get("val", ())) else None
    if not len(data.splits.get("test", ())):
        return model_for_test, untested_metrics(model, histories, data, key, held_out="none"), {}
    if not config.eval.read_test:
        return model_for_test, untested_metrics(model, histories, data, key, held_out="not read"), {}
    how = [f"an ensemble of {len(members)}"] if len(members) > 1 else []
    how += [] if config.eval.tta == "none" else [f"{config.eval.tta} test-time augmentation"]
    print(f"Evaluating on the test split{' with ' + ' and '.join(how) if how else ''} ...", flush=True)
    test = data.splits["test"]

    probs = model_for_test.predict(inputs("test"), verbose=0)
    curves = {"model": probs}
    exported, calibration = model_for_test, None
    if config.eval.calibration == "temperature":
        exported, calibration, probs = calibrate(
            model_for_test, inputs("val"), data.splits["val"].labels, test.labels, probs
        )
        curves = {"uncalibrated": curves["model"], f"temperature {calibration['temperature']:.3f}": probs}
    metrics = classification_metrics(test.labels, probs, data.class_names)
    if data.source_names:
        metrics["sources"] = by_source(test, probs, data)
    if calibration:
        metrics["calibration"] = calibration
    if model_for_test is not model:
        plain = scored_on_test(model, inputs, data)
        metrics["without_tta"] = {k: plain[k] for k in ("accuracy", "f1_macro", "auc")}
    if len(members) == 1:
        metrics.update(best_epoch_summary(histories[0], key))
    else:
        metrics.update(ensemble_summary(model, members, histories, seeds, inputs, data, config, key))
    metrics.update(split="test", params=int(model.count_params()))
    return exported, metrics, curves


def scored_on_test(model: keras.Model, inputs: Callable[[str], Any], data: DataBundle) -> dict[str, Any]:
    """``model``'s metrics on the test split."""
    probs = model.predict(inputs("test"), verbose=0)
    return classification_metrics(data.splits["test"].labels, probs, data.class_names)


def ensemble_summary(
    model: keras.Model,
    members: list[keras.Model],
    histories: list[dict[str, list[float]]],
    seeds: list[int],
    inputs: Callable[[str], Any],
    data: DataBundle,
    config: Config,
    key: str | None,
) -> dict[str, Any]:
    """An ensemble's record beside its test metrics: each member's best epoch and its test
    figures alone, the epochs run in all, and (with a validation split) the averaged
    ``model``'s own validation figures, as a single model reports its best epoch's."""
    summary: dict[str, Any] = {"members": []}
    for seed, member, history in zip(seeds, members, histories):
        alone = scored_on_test(with_tta(member, config.eval.tta), inputs, data)
        summary["members"].append(
            {
                "seed": seed,
                **best_epoch_summary(history, key),
                "accuracy": alone["accuracy"],
                "auc": alone["auc"],
            }
        )
    summary.update(epochs_run=sum(len(h["loss"]) for h in histories))
    if key is not None:  # the ensemble's own validation figures (no TTA)
        model.compile(
            loss=keras.losses.CategoricalCrossentropy(label_smoothing=config.train.label_smoothing),
            metrics=["accuracy"],
        )
        val_loss, val_accuracy = model.evaluate(inputs("val"), verbose=0)
        summary.update(best_val_loss=float(val_loss), best_val_accuracy=float(val_accuracy))
    return summary


def untested_metrics(
    model: keras.Model, histories: list[dict[str, list[float]]], data: DataBundle, key: str | None, held_out: str
) -> dict[str, Any]:
    """A run without test figures: its record. ``held_out``: ``none`` (no test split) or ``not
    read`` (eval.read_test false)."""
    print(UNTESTED[held_out], flush=True)
    metrics: dict[str, Any] = {"split": None, "class_names": list(data.class_names), "held_out": held_out}
    summaries = [best_epoch_summary(history, key) for history in histories]
    if len(histories) == 1:
        metrics.update(summaries[0])
    else:
        metrics.update(epochs_run=sum(s["epochs_run"] for s in summaries), members=summaries)
    metrics.update(params=int(model.count_params()))
    return metrics
