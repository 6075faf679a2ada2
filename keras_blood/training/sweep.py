"""Run a study: every model of a sweep file on every input, and its results table.

    python -m keras_blood.sweep configs/georgetown.yaml [--set key=value ...]

Each cell (model x input) is one ``keras_blood.training.trainer.train`` run; ``--set`` overrides
apply to every cell. The results folder (``sweep.results_dir``, default
``<output.runs_dir>/<name>``) gets:

    results.csv     one row per cell run: model, input, status (ok/failed), val_loss, val_acc,
                    test_acc, ..., error (why a failed cell failed)
    results.md      the Georgetown paper's Table 1 layout, the paper's figures beside ours
    comparison.png  the same as bars
    cells/          one JSON record per finished cell (what makes the sweep resumable)
    runs/           the cells' run folders; `tensorboard --logdir <results>/runs` shows
                    curves, colour-extraction images and the HParams dashboard

A cell whose record exists, made with the same settings, is not run again, so repeating
an interrupted command finishes the study; a cell killed mid-training continues from its
run folder's last finished epoch (``train --resume``). A cell that raises (a model that cannot be
built, a run that diverged) is a failed row with its reason; the other cells still run,
the failed one is not recorded, so the next run tries it again, and the command exits 1.
The last line printed is the results folder.
"""

from __future__ import annotations

import csv
import hashlib
import json
import time
import traceback
from pathlib import Path
from typing import Any

from keras_blood.config.presets import INPUT_TITLES, PAPER_TABLE
from keras_blood.config.schema import Config
from keras_blood.config.sweep import Sweep, SweepCell
from keras_blood.errors import KerasBloodError
from keras_blood.evaluation.plots import plt
from keras_blood.files import write_atomic
from keras_blood.training.resume import first_difference, latest_unfinished
from keras_blood.training.trainer import train

# `seconds` is training (fit) time; `val_*` are at the best validation epoch, whose weights
# are the ones tested and exported. A failed cell has only model, input, status and error.
COLUMNS = (
    *("model", "input", "status", "val_loss", "val_acc", "test_acc", "test_f1"),
    *("params", "epochs", "seconds", "run_dir", "export_dir", "error"),
)

METRICS = ("val_loss", "val_acc", "test_acc", "test_f1")


def fingerprint(config: Config) -> str:
    """What a cell's result depends on: its whole config except where outputs are written."""
    settings = {k: v for k, v in config.to_dict().items() if k != "output"}
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def record_path(results_dir: Path, cell: SweepCell) -> Path:
    return results_dir / "cells" / f"{cell.key}.json"


def finished_row(results_dir: Path, cell: SweepCell) -> dict[str, Any] | None:
    """The recorded row of a cell finished with the same settings, else None."""
    path = record_path(results_dir, cell)
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None  # never happens with the atomic write below; re-running is the fix
    if record.get("fingerprint") != fingerprint(cell.config):
        print(f"{cell.key}: settings changed since it was recorded; running it again", flush=True)
        return None
    return record["row"]


def run_cell(cell: SweepCell) -> dict[str, Any]:
    import keras

    # A cell interrupted mid-training (killed sweep) continues its own run folder.
    unfinished = latest_unfinished(cell.config)
    if unfinished is not None and first_difference(unfinished.config.to_dict(), cell.config.to_dict()):
        unfinished = None  # made with other settings: start afresh
    if unfinished is not None:
        print(f"{cell.key}: continuing its interrupted run {unfinished.path}", flush=True)
    try:
        result = train(cell.config, resume=unfinished.path if unfinished else None)
    finally:
        keras.backend.clear_session()  # the next cell starts from a clean Keras state
    m = result.metrics
    row = {
        "model": cell.label,
        "input": cell.input,
        "val_loss": m["best_val_loss"],
        "val_acc": m["best_val_accuracy"],
        "test_acc": m["accuracy"],
        "test_f1": m["f1_macro"],
        "params": m["params"],
        "epochs": m["epochs_run"],
        "seconds": m["train_seconds"],
        "run_dir": str(result.run_dir),
        "export_dir": str(result.export_dir or ""),  # empty: not published
    }
    write_hparams_session(cell, row, result.run_dir / "logs")
    return row


def failure_reason(exc: Exception) -> str:
    """One line: a KerasBloodError's message (it names the fix), else ``TypeName: message``."""
    message = " ".join(str(exc).split())
    if isinstance(exc, KerasBloodError):
        return message
    if len(message) > 300:  # TensorFlow's messages can carry a whole graph trace
        message = message[:299] + "…"
    return f"{type(exc).__name__}: {message}"


def _failed(row: dict[str, Any]) -> bool:
    return row.get("status") == "failed"


# ----------------------------------------------------------------------------- HParams


def _hparams(cell: SweepCell) -> dict[str, Any]:
    c = cell.config
    return {
        "model": cell.label,
        "input": cell.input,
        "image_size": "x".join(map(str, c.data.height_width)),
        "learning_rate": c.train.learning_rate,
        "batch_size": c.train.batch_size,
    }


def write_hparams_config(sweep: Sweep) -> None:
    import tensorflow as tf
    from tensorboard.plugins.hparams import api as hp

    labels = sorted({cell.label for cell in sweep.cells})
    inputs = sorted({cell.input for cell in sweep.cells})
    with tf.summary.create_file_writer(str(sweep.results_dir / "runs")).as_default():
        hp.hparams_config(
            hparams=[
                hp.HParam("model", hp.Discrete(labels)),
                hp.HParam("input", hp.Discrete(inputs)),
                hp.HParam("image_size"),
                hp.HParam("learning_rate"),
                hp.HParam("batch_size"),
            ],
            metrics=[hp.Metric(name) for name in METRICS],
        )


def write_hparams_session(cell: SweepCell, row: dict[str, Any], logs: Path) -> None:
    """One HParams session per cell, in its run's log folder, beside its curves."""
    import tensorflow as tf
    from tensorboard.plugins.hparams import api as hp

    with tf.summary.create_file_writer(str(logs)).as_default():
        hp.hparams(_hparams(cell), trial_id=cell.key)
        for name in METRICS:
            tf.summary.scalar(name, row[name], step=0)


# ----------------------------------------------------------------------------- results


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def _ours(row: dict[str, Any] | None) -> list[str]:
    """Our val_loss, val_acc and test_acc of a cell: figures, `failed`, or — (not run yet)."""
    if row is None:
        return ["—"] * 3
    if _failed(row):
        return ["failed"] * 3
    return [_fmt(row[key]) for key in ("val_loss", "val_acc", "test_acc")]


def results_markdown(sweep: Sweep, rows: list[dict[str, Any]], command: str | None) -> str:
    by_cell = {(r["model"], r["input"]): r for r in rows}
    labels = list(sweep.spec.models)
    inputs = list(sweep.spec.inputs)
    config = sweep.cells[0].config
    height, width = config.data.height_width
    crop = config.data.cell_crop
    inputs_seen = f" cut to {crop.size}x{crop.size} cell crops" if crop is not None else ""
    lines = [
        f"# {sweep.name}: keras-blood beside the Georgetown paper's Table 1",
        "",
        f"Data: `{config.data.name}` at {height}x{width}{inputs_seen}; validation: "
        f"{config.data.val_fraction:.0%} of each class's TRAIN source cells; test: the TEST split. "
        "Each cell shows **paper / ours**. Ours: val_loss and val_acc at the best validation "
        "epoch, and the test accuracy of those weights (the exported model). The paper "
        "reports validation figures only.",
        "",
    ]
    if command:
        lines += [f"Command: `{command}`", ""]
    header = ["Model"]
    for name in inputs:
        title = INPUT_TITLES.get(name, name)
        header += [f"{title}: val_loss", f"{title}: val_acc", f"{title}: test_acc (ours)"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label in labels:
        paper_name, paper = PAPER_TABLE.get(label, (label, {}))
        cells = [paper_name if label in PAPER_TABLE else f"{label} (not in the paper)"]
        for name in inputs:
            p_loss, p_acc = paper.get(name, (None, None))
            ours = _ours(by_cell.get((label, name)))
            cells += [f"{_fmt(p_loss)} / {ours[0]}", f"{_fmt(p_acc)} / {ours[1]}", ours[2]]
        lines.append("| " + " | ".join(cells) + " |")
    failed = [r for r in rows if _failed(r)]
    if failed:
        lines += ["", f"{len(failed)} cell(s) failed; run the command again to retry them:", ""]
        for r in failed:
            lines.append(f"- {r['model']} / {INPUT_TITLES.get(r['input'], r['input'])}: {r['error']}")
    missing = len(labels) * len(inputs) - len(rows)
    if missing:
        lines += ["", f"{missing} cell(s) not run yet (—); run the command again to finish them."]
    return "\n".join(lines) + "\n"


def plot_comparison(sweep: Sweep, rows: list[dict[str, Any]], path: Path) -> Path:
    import numpy as np

    by_cell = {(r["model"], r["input"]): r for r in rows if not _failed(r)}
    failed = {(r["model"], r["input"]) for r in rows if _failed(r)}
    labels = list(sweep.spec.models)
    inputs = list(sweep.spec.inputs)
    width = 1.1 * len(labels) * len(inputs) + 3
    fig, axes = plt.subplots(1, len(inputs), figsize=(width, 4.2), squeeze=False)
    x = np.arange(len(labels))
    series = (
        ("paper val_acc", "#bbbbbb", None),
        ("ours val_acc", "#4c72b0", "val_acc"),
        ("ours test_acc", "#dd8452", "test_acc"),
    )
    for ax, name in zip(axes[0], inputs):
        for i, (title, color, key) in enumerate(series):
            if key is None:
                paper = [PAPER_TABLE.get(label, ("", {}))[1].get(name) for label in labels]
                values = [p[1] if p else np.nan for p in paper]
            else:
                values = [by_cell[(label, name)][key] if (label, name) in by_cell else np.nan for label in labels]
            ax.bar(x + (i - 1) * 0.27, values, 0.27, label=title, color=color)
        for j, label in enumerate(labels):  # a gap where our bars would be, marked
            if (label, name) in failed:
                ax.text(j + 0.135, 0.02, "failed", rotation=90, ha="center", va="bottom", fontsize=8, color="#c44e52")
        ax.axhline(0.842, color="black", linestyle=":", linewidth=1, label="paper's best (0.842)")
        ax.set_xticks(x, labels, rotation=35, ha="right")
        ax.set_xlim(-0.5, len(labels) - 0.5)  # missing bars at the end must not narrow the axis
        ax.set_ylim(0, 1)
        ax.set_title(INPUT_TITLES.get(name, name))
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("accuracy")
    handles, names = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=4, fontsize=8)
    fig.suptitle(f"{sweep.name}: paper vs keras-blood")
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_results(sweep: Sweep, rows: list[dict[str, Any]], command: str | None) -> None:
    out = sweep.results_dir
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, restval="")
        writer.writeheader()
        writer.writerows({k: row[k] for k in COLUMNS if k in row} for row in rows)
    (out / "results.md").write_text(results_markdown(sweep, rows, command))
    plot_comparison(sweep, rows, out / "comparison.png")


# ----------------------------------------------------------------------------- driver


def run_sweep(sweep: Sweep, command: str | None = None) -> list[str]:
    """Run every unfinished cell, recording each that finishes; return the failed cells' keys.

    A cell that raises is a failed row (not recorded, so the next run tries it again) and
    the sweep goes on; KeyboardInterrupt still stops it.
    """
    rows: dict[str, dict[str, Any]] = {}
    hparams_written = False
    total = len(sweep.cells)
    for i, cell in enumerate(sweep.cells, 1):
        row = finished_row(sweep.results_dir, cell)
        if row is not None:
            done = f"val_acc {row['val_acc']:.3f}, test_acc {row['test_acc']:.3f}"
            print(f"[{i}/{total}] {cell.key}: finished before ({done}); skipping", flush=True)
            rows[cell.key] = {**row, "status": "ok"}
            continue
        print(f"\n[{i}/{total}] {cell.key}: training", flush=True)
        start = time.perf_counter()
        if not hparams_written:
            write_hparams_config(sweep)
            hparams_written = True
        try:
            row = run_cell(cell)
        except Exception as exc:
            if not isinstance(exc, KerasBloodError):
                traceback.print_exc()  # not a user's mistake: keep what a bug report needs
            reason = failure_reason(exc)
            print(f"[{i}/{total}] {cell.key}: failed: {reason}", flush=True)
            rows[cell.key] = {"model": cell.label, "input": cell.input, "status": "failed", "error": reason}
        else:
            record = {
                "fingerprint": fingerprint(cell.config),
                "row": row,
                "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
                "wall_seconds": round(time.perf_counter() - start, 1),
            }
            write_atomic(record_path(sweep.results_dir, cell), json.dumps(record, indent=2))
            rows[cell.key] = {**row, "status": "ok"}
        # Results after every cell, so a long study can be read while it runs.
        write_results(sweep, list(rows.values()), command)
    write_results(sweep, list(rows.values()), command)
    print(f"\n{(sweep.results_dir / 'results.md').read_text()}")
    return [key for key, row in rows.items() if _failed(row)]
