"""``python -m keras_blood.sweep`` (keras_blood.training.sweep): every cell trained once,
resumable, results laid out like Table 1."""

import csv
import json

import pytest
import tensorflow as tf

from keras_blood import sweep as sweep_command
from keras_blood.config.cli import run_main
from keras_blood.config.sweep import load_sweep
from keras_blood.errors import ConfigError
from keras_blood.training import sweep as sweep_module
from tests.helpers import REPO, kaggle_tree

GEORGETOWN = REPO / "configs" / "georgetown.yaml"


@pytest.fixture
def overrides(tmp_path):
    """A tiny Kaggle look-alike folder (the sweep's logic needs no real images) and one
    short epoch per cell."""
    root = kaggle_tree(tmp_path / "data", {s: dict.fromkeys("ABCD", 3) for s in ("TRAIN", "TEST")})
    return [
        f"data.root={root}",
        "data.max_examples=48",
        "train.epochs=1",
        "train.batch_size=32",
        "sweep.models=[basic, dropout03]",
        f"output.runs_dir={tmp_path / 'runs'}",
        f"output.publish_dir={tmp_path / 'saved_models'}",
    ]


def _args(overrides):
    return [str(GEORGETOWN), *[arg for item in overrides for arg in ("--set", item)]]


@pytest.mark.slow
def test_sweep_resumes_and_writes_the_table(overrides, tmp_path, monkeypatch, capsys):
    results = tmp_path / "runs" / "georgetown"
    # A VGG16 whose weights file is missing cannot be built: its cells fail, the rest run.
    overrides = [*overrides, f"sweep.models=[dropout03, {{name: vgg16, weights: {tmp_path / 'no.h5'}}}]"]
    trained = []
    run_cell = sweep_module.run_cell

    def interrupted_at_second(cell):
        if len(trained) == 1:
            raise KeyboardInterrupt
        trained.append(cell.key)
        return run_cell(cell)

    monkeypatch.setattr(sweep_module, "run_cell", interrupted_at_second)
    with pytest.raises(KeyboardInterrupt):
        sweep_command.main(_args(overrides))
    assert sorted(p.stem for p in (results / "cells").glob("*.json")) == ["dropout03-original"]

    def counted(cell):
        trained.append(cell.key)
        return run_cell(cell)

    monkeypatch.setattr(sweep_module, "run_cell", counted)
    capsys.readouterr()
    assert run_main(sweep_command.main, _args(overrides)) == 1
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(results)
    vgg16 = ["vgg16-original", "vgg16-color_extraction"]
    assert trained == ["dropout03-original", "dropout03-color_extraction", *vgg16]

    with open(results / "results.csv") as f:
        all_rows = list(csv.DictReader(f))
    assert [(r["model"], r["input"]) for r in all_rows] == [tuple(k.split("-")) for k in trained]
    rows, failed = all_rows[:2], all_rows[2:]
    for row in rows:
        assert row["status"] == "ok" and row["error"] == ""
        assert 0 <= float(row["val_acc"]) <= 1 and 0 <= float(row["test_acc"]) <= 1
        assert float(row["val_loss"]) > 0 and float(row["seconds"]) > 0 and int(row["params"]) == 96_460
    for row in failed:
        assert row["status"] == "failed" and row["val_acc"] == "" and row["run_dir"] == ""
        assert row["error"].startswith("model.weights = ") and "no such file" in row["error"]
    markdown = (results / "results.md").read_text()
    assert "| Dropout(0.3) | 0.818 / " in markdown and "0.842 / " in markdown and "—" not in markdown
    assert "| Vgg16 | 1.922 / failed | 0.383 / failed | failed |" in markdown
    assert "2 cell(s) failed" in markdown and f"- vgg16 / Original: {failed[0]['error']}" in markdown
    assert (results / "comparison.png").read_bytes()[:4] == b"\x89PNG"

    # One HParams session per cell, beside its curves. Every cell logs its cell crops
    # (on by default for these images); only the colour cells the extracted pictures.
    for row in rows:
        sessions = []
        for event_file in (tmp_path / row["run_dir"] / "logs").glob("events.out.tfevents.*"):
            for event in tf.compat.v1.train.summary_iterator(str(event_file)):
                sessions += [v for v in event.summary.value if v.metadata.plugin_data.plugin_name == "hparams"]
        assert sessions, row["run_dir"]
        assert (tmp_path / row["run_dir"] / "color_extraction.png").is_file()
        (pictures,) = (tmp_path / row["run_dir"] / "logs" / "color_extraction").glob("events.out.tfevents.*")
        tags = {v.tag for e in tf.compat.v1.train.summary_iterator(str(pictures)) for v in e.summary.value}
        assert "color_extraction/cell_crop" in tags
        assert ("color_extraction/extracted" in tags) == (row["input"] == "color_extraction")

    # Repeating the command retries only the failed cells and changes nothing else (a
    # retried cell that fails again leaves no run folder).
    before = sorted(p.name for p in (results / "runs").iterdir() if p.is_dir())
    trained.clear()
    capsys.readouterr()
    assert sweep_command.main(_args(overrides)) == 1
    assert trained == vgg16
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(results)
    assert sorted(p.name for p in (results / "runs").iterdir() if p.is_dir()) == before
    with open(results / "results.csv") as f:
        assert list(csv.DictReader(f)) == all_rows


def _fake_row(cell):
    metrics = {"val_loss": 0.5, "val_acc": 0.8, "test_acc": 0.7, "test_f1": 0.6, "params": 10, "epochs": 1}
    return {"model": cell.label, "input": cell.input, **metrics, "seconds": 1.0, "run_dir": "r", "export_dir": "e"}


def test_a_failing_cell_is_reported_and_the_others_run(overrides, tmp_path, monkeypatch, capsys):
    results = tmp_path / "runs" / "georgetown"
    trained = []
    errors = {
        "basic-color_extraction": ConfigError("model.weights = 'imagenet': could not get the ImageNet weights"),
        "dropout03-original": ValueError("a bug,\n  on two lines"),
    }

    def failing(cell):
        trained.append(cell.key)
        if cell.key in errors:
            raise errors[cell.key]
        return _fake_row(cell)

    monkeypatch.setattr(sweep_module, "run_cell", failing)
    assert run_main(sweep_command.main, _args(overrides)) == 1
    out, err = capsys.readouterr()
    assert out.strip().splitlines()[-1] == str(results)
    assert "Traceback" in err and "ValueError" in err  # a bug keeps its traceback; a user's mistake does not
    assert err.count("Traceback") == 1
    assert trained == ["basic-original", "basic-color_extraction", "dropout03-original", "dropout03-color_extraction"]
    with open(results / "results.csv") as f:
        rows = {f"{r['model']}-{r['input']}": r for r in csv.DictReader(f)}
    assert [r["status"] for r in rows.values()] == ["ok", "failed", "failed", "ok"]
    assert rows["basic-color_extraction"]["error"] == str(errors["basic-color_extraction"])
    assert rows["dropout03-original"]["error"] == "ValueError: a bug, on two lines"
    markdown = (results / "results.md").read_text()
    assert "| Basic | 2.187 / 0.500 | 0.791 / 0.800 | 0.700 | 1.578 / failed | 0.742 / failed | failed |" in markdown
    assert "- basic / Colour extraction: model.weights = 'imagenet'" in markdown
    assert "- dropout03 / Original: ValueError: a bug, on two lines" in markdown and "not run yet" not in markdown
    assert (results / "comparison.png").read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.stem for p in (results / "cells").glob("*.json")) == [
        "basic-original",
        "dropout03-color_extraction",
    ]

    # The next run tries the failed cells again, and only those.
    trained.clear()
    errors.clear()
    assert run_main(sweep_command.main, _args(overrides)) == 0
    assert trained == ["basic-color_extraction", "dropout03-original"]
    with open(results / "results.csv") as f:
        assert [r["status"] for r in csv.DictReader(f)] == ["ok"] * 4
    assert "failed" not in (results / "results.md").read_text()


def test_a_cell_recorded_with_other_settings_runs_again(overrides, tmp_path):
    sweep = load_sweep(GEORGETOWN, overrides)
    cell = sweep.cells[0]
    path = sweep_module.record_path(sweep.results_dir, cell)
    path.parent.mkdir(parents=True)
    row = {"val_acc": 0.5}
    path.write_text(json.dumps({"fingerprint": sweep_module.fingerprint(cell.config), "row": row}))
    assert sweep_module.finished_row(sweep.results_dir, cell) == row
    # Where runs are written does not matter; what is trained does.
    moved = load_sweep(GEORGETOWN, [*overrides, "output.publish_dir=/elsewhere"]).cells[0]
    assert sweep_module.finished_row(sweep.results_dir, moved) == row
    changed = load_sweep(GEORGETOWN, [*overrides, "train.learning_rate=0.01"]).cells[0]
    assert sweep_module.finished_row(sweep.results_dir, changed) is None


def test_table_shows_missing_cells_and_models_outside_the_paper(overrides):
    sweep = load_sweep(GEORGETOWN, [*overrides, "sweep.models={dropout03: {}, wide: {name: basic, dense_units: 80}}"])
    rows = [
        {"model": "wide", "input": "original", "status": "ok", "val_loss": 0.5, "val_acc": 0.81234, "test_acc": 0.7},
        {"model": "dropout03", "input": "color_extraction", "status": "failed", "error": "out of memory"},
    ]
    markdown = sweep_module.results_markdown(sweep, rows, "python -m keras_blood.sweep x.yaml")
    assert "| Dropout(0.3) | 0.818 / — | 0.842 / — | — | 0.696 / failed | 0.813 / failed | failed |" in markdown
    assert "| wide (not in the paper) | — / 0.500 | — / 0.812 | 0.700 | — / — | — / — | — |" in markdown
    assert "1 cell(s) failed" in markdown and "- dropout03 / Colour extraction: out of memory" in markdown
    assert "2 cell(s) not run yet" in markdown and "`python -m keras_blood.sweep x.yaml`" in markdown


@pytest.mark.slow
def test_a_cell_killed_mid_training_continues_its_run_folder(overrides, tmp_path, capsys):
    from keras_blood.training.runs import RunFolder

    overrides = [*overrides, "sweep.models=[basic]", "sweep.inputs=[original]"]
    (cell,) = load_sweep(GEORGETOWN, overrides).cells
    interrupted = RunFolder.create(cell.config)  # what a kill during its first epoch leaves
    assert run_main(sweep_command.main, _args(overrides)) == 0
    assert f"continuing its interrupted run {interrupted.path}" in capsys.readouterr().out
    assert [p.name for p in interrupted.path.parent.iterdir()] == [interrupted.path.name]
    assert interrupted.finished
