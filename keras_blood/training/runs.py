"""A run folder, ``runs/<config name>/<timestamp>/``, and the state of the run inside it.

``status.json`` says how far the run got (``training``, ``trained``, ``finished``) and
which ensemble members are done; each member has its per-epoch record
(:mod:`keras_blood.training.history`), its best checkpoint and, while it trains, its epoch
backup (:mod:`keras_blood.training.backups`). ``data_split.json`` records what the run
trains on, for ``--resume`` (:mod:`keras_blood.training.resume`).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from keras_blood.config.loading import load_config, save_config
from keras_blood.config.paths import RUN_CONFIG, STATUS
from keras_blood.config.schema import Config
from keras_blood.errors import ConfigError, KerasBloodError
from keras_blood.files import new_folder, write_atomic

RUNNING, TRAINED, FINISHED = "training", "trained", "finished"
DATA_SPLIT = "data_split.json"  # what the run trains on: each file's class and split


class RunError(KerasBloodError):
    """A run folder that cannot be written, or a backup that cannot be continued from."""


class RunFolder:
    """``runs/<config name>/<timestamp>/`` and the state of the run inside it."""

    def __init__(self, path: Path):
        self.path = Path(path)

    @classmethod
    def create(cls, config: Config, data_split: dict[str, Any] | None = None) -> RunFolder:
        """A new run folder; ``data_split``: what it trains on (DATA_SPLIT), for ``--resume``."""
        run = cls(new_folder(config.output.runs_dir / config.name))
        try:
            save_config(config, run.path / RUN_CONFIG)
            if data_split is not None:
                write_atomic(run.path / DATA_SPLIT, json.dumps(data_split))
            (run.path / "checkpoints").mkdir()
            run.save_status({"state": RUNNING, "members_done": 0})
        except BaseException:  # a full disk, a kill: no folder that looks like a run and is not one
            shutil.rmtree(run.path, ignore_errors=True)
            raise
        return run

    @classmethod
    def open(cls, path: Path) -> RunFolder:
        """An existing run folder, for ``--resume``; a ConfigError if it is not one."""
        run = cls(path)
        if not (run.path / RUN_CONFIG).is_file() or not (run.path / STATUS).is_file():
            raise ConfigError(
                f"--resume {path}: not a keras-blood run folder (expected config.yaml and {STATUS}, "
                "e.g. runs/dropout03/20250101-120000)"
            )
        return run

    # ------------------------------------------------------------------ state

    @property
    def config(self) -> Config:
        return load_config(self.path / RUN_CONFIG)

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


def check_writable(folder: Path, setting: str) -> None:
    """A RunError, before anything is built, where ``folder`` cannot be created or written
    to. ``setting``: how the message names the fix."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(prefix=".write-test-", dir=folder):
            pass
    except OSError as exc:
        raise RunError(f"cannot write to {str(folder)!r} ({exc.strerror or exc}); {setting}") from None


def existing_folder(path: Path) -> Path:
    """``path``, or its nearest ancestor that exists (what a new folder there is made in)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_run_target(config: Config, resume: str | Path | None) -> None:
    """Before anything is built: the run folder (new under output.runs_dir, or the one
    resumed) can be written. Nothing is created here."""
    if resume:
        fix = "make it writable, or copy the run folder to a writable place and --resume the copy"
        check_writable(Path(resume), fix)
        return
    runs_dir = config.output.runs_dir
    folder = existing_folder(runs_dir / config.name)
    if not folder.is_dir():
        raise RunError(
            f"output.runs_dir {str(runs_dir)!r}: {str(folder)!r} is not a folder; --set output.runs_dir=<a folder>"
        )
    check_writable(folder, f"output.runs_dir is {str(runs_dir)!r}; --set output.runs_dir=<a writable folder>")
