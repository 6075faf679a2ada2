"""A run folder and its state on disk: what lets a killed run continue where it stopped.

``status.json`` says how far the run got (``training``, ``trained``, ``finished``) and
which ensemble members are done; each member's ``history*.csv`` is its per-epoch record
(what early stopping and the best checkpoint resume from) and ``backup/<member>/`` is
Keras's ``BackupAndRestore`` state (weights, optimizer and the epoch reached) while that
member trains. Every file here is replaced atomically, so a kill never leaves one
half-written.
"""

from __future__ import annotations

import contextlib
import csv
import json
import shutil
from pathlib import Path
from typing import Any

from keras_blood.config.loading import load_config, save_config
from keras_blood.config.paths import STATUS
from keras_blood.config.schema import Config
from keras_blood.errors import ConfigError
from keras_blood.files import new_folder, write_atomic

RUNNING, TRAINED, FINISHED = "training", "trained", "finished"
FINE_TUNE_BACKUP = "fine-tune"  # inside a member's backup: the second stage of a two-stage run


class RunFolder:
    """``runs/<config name>/<timestamp>/`` and the state of the run inside it."""

    def __init__(self, path: Path):
        self.path = Path(path)

    @classmethod
    def create(cls, config: Config) -> "RunFolder":
        run = cls(new_folder(config.output.runs_dir / config.name))
        save_config(config, run.path / "config.yaml")
        (run.path / "checkpoints").mkdir()
        run.save_status({"state": RUNNING, "members_done": 0})
        return run

    @classmethod
    def open(cls, path: Path) -> "RunFolder":
        """An existing run folder, for ``--resume``; a ConfigError if it is not one."""
        run = cls(path)
        if not (run.path / "config.yaml").is_file() or not (run.path / STATUS).is_file():
            raise ConfigError(
                f"--resume {path}: not a keras-blood run folder (expected config.yaml and {STATUS}, "
                "e.g. runs/dropout03/20250101-120000)"
            )
        return run

    # ------------------------------------------------------------------ state

    @property
    def config(self) -> Config:
        return load_config(self.path / "config.yaml")

    def status(self) -> dict[str, Any]:
        return json.loads((self.path / STATUS).read_text())

    def save_status(self, status: dict[str, Any]) -> None:
        write_atomic(self.path / STATUS, json.dumps(status, indent=2))

    def update_status(self, **changes: Any) -> dict[str, Any]:
        status = {**self.status(), **changes}
        self.save_status(status)
        return status

    @property
    def finished(self) -> bool:
        return self.status()["state"] == FINISHED

    # ------------------------------------------------------------------ per member

    @staticmethod
    def tag(index: int, ensemble: int) -> str:
        """A single model keeps the plain names; ensemble members get member-<n> ones."""
        return f"member-{index + 1}" if ensemble > 1 else ""

    def checkpoint(self, tag: str) -> Path:
        return self.path / "checkpoints" / f"{tag or 'best'}.weights.h5"

    def history_csv(self, tag: str) -> Path:
        return self.path / (f"history-{tag}.csv" if tag else "history.csv")

    def backup_dir(self, tag: str) -> Path:
        return self.path / "backup" / (tag or "model")

    def drop_backup(self, tag: str) -> None:
        """A finished member needs no backup: its checkpoint and history are its record."""
        shutil.rmtree(self.backup_dir(tag), ignore_errors=True)
        with contextlib.suppress(OSError):  # the folder goes with its last member's backup
            self.backup_dir(tag).parent.rmdir()

    def logs_dir(self, tag: str) -> Path:
        return self.path / "logs" / tag


def backed_up_epochs(backup_dir: Path) -> int:
    """Epochs a member's BackupAndRestore folder holds (0 when there is none yet). The
    second stage of train.transfer_schedule two_stage backs up into its ``fine-tune/``."""
    epochs = []
    for folder in (backup_dir, backup_dir / FINE_TUNE_BACKUP):
        try:
            epochs.append(int(json.loads((folder / "training_metadata.json").read_text())["epoch"]))
        except (OSError, ValueError, KeyError):
            epochs.append(0)
    return max(epochs)


def read_history(path: Path) -> dict[str, list[float]]:
    """A CSVLogger file as Keras's ``History.history``: column -> per-epoch values."""
    if not path.is_file():
        return {}
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return {key: [float(row[key]) for row in rows] for key in (rows[0] if rows else {}) if key != "epoch"}


def truncate_history(path: Path, epochs: int) -> None:
    """Keep the header and the first ``epochs`` rows: the epochs the backup holds. A
    kill between the CSV's row and the backup's save leaves one row the resumed run
    trains again."""
    if not path.is_file():
        return
    lines = path.read_text().splitlines(keepends=True)
    if len(lines) > epochs + 1:
        write_atomic(path, "".join(lines[: epochs + 1]) if epochs else "")


def latest_unfinished(config: Config) -> RunFolder | None:
    """The newest run of ``config.name`` under ``output.runs_dir`` that did not finish."""
    parent = config.output.runs_dir / config.name
    if not parent.is_dir():
        return None
    for path in sorted((p for p in parent.iterdir() if (p / STATUS).is_file()), key=lambda p: p.name, reverse=True):
        run = RunFolder(path)
        if not run.finished:
            return run
    return None


def first_difference(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> str | None:
    """The first dotted key whose value differs between two config dicts."""
    for key in sorted(set(a) | set(b)):
        left, right = a.get(key), b.get(key)
        if isinstance(left, dict) and isinstance(right, dict):
            found = first_difference(left, right, f"{prefix}{key}.")
            if found:
                return found
        elif left != right:
            return f"{prefix}{key} ({left!r} in the run, {right!r} now)"
    return None


def resolve_resume(resume: str, config_path: str | None, overrides: list[str]) -> tuple[Config, RunFolder]:
    """``--resume RUN_DIR`` or ``--resume latest CONFIG``: the run to continue and its config."""
    if resume != "latest":
        if config_path or overrides:
            raise ConfigError(
                f"--resume {resume}: the run's own config.yaml is used; drop the CONFIG/--set "
                "arguments (or use --resume latest CONFIG to find the run from a config)"
            )
        run = RunFolder.open(Path(resume))
        return run.config, run
    if not config_path:
        raise ConfigError("--resume latest needs the CONFIG whose newest unfinished run to continue")
    config = load_config(config_path, overrides)
    run = latest_unfinished(config)
    if run is None:
        raise ConfigError(
            f"--resume latest: no unfinished run of {config.name!r} under {config.output.runs_dir / config.name}; "
            f"start one with: python -m keras_blood.train {config_path}"
        )
    difference = first_difference(run.config.to_dict(), config.to_dict())
    if difference:
        raise ConfigError(f"--resume latest: {run.path} was started with other settings: {difference}")
    return run.config, run
