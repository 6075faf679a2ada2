"""Resuming a killed run: the run folder's state, and kill -9 then --resume end to end."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import pytest

from keras_blood.config.loading import load_config
from keras_blood.config.schema import Config
from keras_blood.errors import ConfigError
from keras_blood.training import backups, runs
from keras_blood.training.callbacks import ResumableEarlyStopping
from keras_blood.training.history import read_history, truncate_history
from keras_blood.training.resume import latest_unfinished, resolve_resume
from keras_blood.training.trainer import schedule_done
from tests.helpers import REPO


def config(tmp_path, **train):
    return Config.model_validate(
        {"name": "exp", "model": {"name": "fnn"}, "train": train, "output": {"runs_dir": str(tmp_path / "runs")}}
    )


def test_history_is_cut_back_to_the_epochs_the_backup_holds(tmp_path):
    csv = tmp_path / "history.csv"
    csv.write_text("epoch,loss,val_loss\n0,2.0,1.9\n1,1.5,1.4\n2,1.2,1.3\n")
    truncate_history(csv, 2)
    assert read_history(csv) == {"loss": [2.0, 1.5], "val_loss": [1.9, 1.4]}
    truncate_history(csv, 0)
    assert read_history(csv) == {}
    backup = tmp_path / "backup"
    assert backups.backed_up_epochs(backup) == 0
    backups.write_backup(backup, 4, lambda path: path.write_bytes(b"w"), 0, False, None)
    assert backups.backed_up_epochs(backup) == 4


def test_early_stopping_continues_from_the_recorded_epochs():
    stopper = ResumableEarlyStopping(past=[1.0, 0.5, 0.6, 0.7], monitor="val_loss", patience=3)
    stopper.set_model(keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)]))
    stopper.on_train_begin()
    assert (stopper.best, stopper.best_epoch, stopper.wait) == (0.5, 1, 2)
    stopper.on_epoch_end(4, {"val_loss": 0.8})  # a third epoch without improvement: stop
    assert stopper.model.stop_training
    patient = config(Path("."), epochs=10, early_stopping_patience=3)
    assert schedule_done({"val_loss": [1.0, 0.5, 0.6, 0.7, 0.8]}, patient)
    assert not schedule_done({"val_loss": [1.0, 0.5, 0.6, 0.7]}, patient)
    assert schedule_done({"val_loss": [1.0] * 10}, config(Path("."), epochs=10, early_stopping_patience=0))


def test_latest_finds_the_newest_unfinished_run_with_the_same_settings(tmp_path, write_config):
    path = write_config({"model": {"name": "fnn"}, "output": {"runs_dir": str(tmp_path / "runs")}}, name="exp")
    cfg = load_config(path)
    old = runs.RunFolder.create(cfg)
    time.sleep(1.1)  # run folders are named by the second
    new = runs.RunFolder.create(cfg)
    new.update_status(state=runs.FINISHED, export="x")
    assert latest_unfinished(cfg).path == old.path
    resumed_config, run = resolve_resume("latest", str(path), [])
    assert run.path == old.path and resumed_config == cfg
    with pytest.raises(ConfigError, match=r"started with other settings: train.epochs \(30 in the run, 5 now\)"):
        resolve_resume("latest", str(path), ["train.epochs=5"])
    with pytest.raises(ConfigError, match="no unfinished run of 'other'"):
        resolve_resume("latest", str(write_config({"model": {"name": "fnn"}}, name="other")), [])
    with pytest.raises(ConfigError, match="not a keras-blood run folder"):
        resolve_resume(str(tmp_path), None, [])
    with pytest.raises(ConfigError, match="drop the CONFIG/--set"):
        resolve_resume(str(old.path), str(path), [])


EPOCHS = 8


def train_command(root, tmp_path, *extra):
    values = {
        "data.root": root,
        "data.tfds_dir": os.environ["TFDS_DATA_DIR"],
        "data.max_examples": 1024,
        "train.epochs": EPOCHS,
        "train.early_stopping_patience": 0,
        "output.runs_dir": tmp_path / "runs",
        "output.publish_dir": tmp_path / "saved_models",
        "output.publish": "always",  # a smoke run (data.max_examples) is otherwise not published
    }
    sets = [item for key, value in values.items() for item in ("--set", f"{key}={value}")]
    return [sys.executable, "-m", "keras_blood.train", *extra, str(REPO / "configs" / "cnn.yaml"), *sets]


def train_here(command: list[str], capfd) -> subprocess.CompletedProcess:
    """``python -m keras_blood.train ...`` run in this process (its arguments after ``-m``)."""
    from keras_blood.config.cli import run_main
    from keras_blood.train import main

    capfd.readouterr()
    status = run_main(main, command[3:])
    out, err = capfd.readouterr()
    return subprocess.CompletedProcess(command, status, out, err)


@pytest.mark.slow
def test_a_killed_run_resumes_from_its_last_epoch_and_publishes_once(
    bloodmnist_root, tmp_path, child_env, capfd, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    run_parent = tmp_path / "runs" / "cnn"
    proc = subprocess.Popen(
        train_command(bloodmnist_root, tmp_path),
        cwd=tmp_path,
        env=child_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 240
    killed_after = 0
    while time.time() < deadline and proc.poll() is None:
        metadata = list(run_parent.glob("*/backup/model/training_metadata.json"))
        if metadata:
            try:
                killed_after = json.loads(metadata[0].read_text())["epoch"]
            except ValueError:
                killed_after = 0  # caught mid-write
            if killed_after >= 3:
                os.kill(proc.pid, signal.SIGKILL)
                break
        time.sleep(0.05)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    (run_dir,) = run_parent.iterdir()
    assert json.loads((run_dir / "status.json").read_text())["state"] == "training"
    assert not list((tmp_path / "saved_models").rglob("saved_model.pb"))  # nothing published yet

    # Resumed in this process, where TensorFlow has started already: what is tested is
    # what the killed one left behind.
    resumed = train_here(train_command(bloodmnist_root, tmp_path, "--resume", "latest"), capfd)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"Resuming training after epoch {killed_after}" in resumed.stdout
    history = read_history(run_dir / "history.csv")
    assert len(history["loss"]) == EPOCHS
    assert [int(line.split(",")[0]) for line in (run_dir / "history.csv").read_text().splitlines()[1:]] == list(
        range(EPOCHS)
    )
    # The resumed epochs went on from the backup's weights, not from fresh ones: the first
    # of them starts nearer the loss the killed run had reached than a first epoch's.
    loss = history["loss"]
    assert loss[killed_after] < (loss[0] + loss[killed_after - 1]) / 2, loss
    # The training clock went on from where the record stopped, not from zero.
    assert history["elapsed_minutes"] == sorted(history["elapsed_minutes"])
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "finished" and not (run_dir / "backup").exists()
    assert resumed.stdout.strip().splitlines()[-1] == status["export"] == str(tmp_path / "saved_models" / "cnn" / "1")

    # Resuming a finished run publishes nothing more.
    again = train_here(train_command(bloodmnist_root, tmp_path, "--resume", str(run_dir))[:5], capfd)
    assert again.returncode == 0 and "finished already" in again.stdout
    assert [p.name for p in (tmp_path / "saved_models" / "cnn").iterdir()] == ["1"]
