"""A run folder and its state on disk: what lets a killed run continue where it stopped.

``status.json`` says how far the run got (``training``, ``trained``, ``finished``) and
which ensemble members are done; each member's ``history*.csv`` is its per-epoch record
(what early stopping and the best checkpoint resume from) and ``backup/<member>/`` holds
the weights, the optimizer's state and the epoch reached while that member trains.

Nothing here is rewritten in place, so a kill at any moment leaves the last complete
epoch: the backup's weights go to a staging file renamed to ``state-<epoch>.weights.h5``,
then ``training_metadata.json`` (renamed into place too) names that file with its size
and SHA-256; it is the epoch's commit. A resumed run checks the file against the record
before trusting the epoch. The best checkpoint is published only after its epoch is
committed (a hard link of the backup's file, renamed over ``checkpoints/best.weights.h5``),
so it never holds an epoch the record does not; the record says what it must hold.

``data_split.json`` records what the run trains on (:mod:`keras_blood.data.split_record`):
a lab's folder's files with each one's class and split, a published data set's files'
fingerprint. ``--resume`` on a folder whose split would be drawn otherwise is refused in
one line (:func:`check_resumed_data`), before the data is read.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from keras_blood.config.loading import load_config, save_config
from keras_blood.config.paths import STATUS
from keras_blood.config.schema import Config
from keras_blood.data.split_record import split_changes
from keras_blood.errors import ConfigError, KerasBloodError
from keras_blood.files import (
    digest,
    link_atomic,
    matches,
    megabytes,
    new_folder,
    require_free_space,
    staging,
    write_atomic,
)

RUNNING, TRAINED, FINISHED = "training", "trained", "finished"
FINE_TUNE_BACKUP = "fine-tune"  # inside a member's backup: the second stage of a two-stage run
METADATA = "training_metadata.json"  # Keras's name for a backup's epoch; here also its weights file
STATE_PREFIX = "state-"  # state-<epoch>.weights.h5: a backup's weights and optimizer state
LEGACY_WEIGHTS = "latest.weights.h5"  # Keras's BackupAndRestore file, rewritten in place (older runs)
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
            save_config(config, run.path / "config.yaml")
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


# ----------------------------------------------------------------------------- backups


@dataclass(frozen=True)
class Backup:
    """A committed backup of one training stage: the epoch reached and the file holding
    the weights and optimizer state at its end (checked against the record)."""

    folder: Path
    epoch: int
    weights: Path
    record: dict[str, Any]  # training_metadata.json

    @property
    def best(self) -> dict[str, Any] | None:
        """What the member's best checkpoint holds: ``{"epoch", "size", "sha256"}``
        (None: no epoch improved yet, or a backup from before this record)."""
        return self.record.get("best")


def damaged(folder: Path, why: str) -> RunError:
    member = folder.parent if folder.name == FINE_TUNE_BACKUP else folder
    return RunError(
        f"the backup in {folder} cannot be continued from: {why}. Delete {member} to train this model "
        "again from epoch 1 in the same run (its history is cut back to match), or start a new run"
    )


def read_backup(folder: Path) -> Backup | None:
    """The backup committed in ``folder``, its weights file checked against the record
    (size and SHA-256); None where no epoch was committed. A RunError, naming the fix,
    where the record or the file is damaged: the epoch it claims cannot be restored."""
    metadata = folder / METADATA
    if not metadata.is_file():
        return None
    try:
        record = json.loads(metadata.read_text())
        epoch = int(record["epoch"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise damaged(folder, f"{METADATA} is unreadable ({exc})") from None
    weights = record.get("weights")
    if weights is None:  # Keras's own format: the file is checked when it is loaded
        path = folder / LEGACY_WEIGHTS
        if not path.is_file():
            raise damaged(folder, f"{METADATA} says epoch {epoch} but {LEGACY_WEIGHTS} is missing")
        return Backup(folder, epoch, path, record)
    try:
        path = folder / Path(weights["file"]).name
        problem = matches(path, weights)
    except (KeyError, TypeError):
        problem = f"{METADATA} does not name its weights file"
    if problem:
        raise damaged(folder, f"the weights of epoch {epoch}: {problem}")
    return Backup(folder, epoch, path, record)


def member_backup(backup_dir: Path) -> Backup | None:
    """The backup a member continues from: that of the second stage of
    train.transfer_schedule two_stage (``fine-tune/``) once it has one, else the first's."""
    return read_backup(backup_dir / FINE_TUNE_BACKUP) or read_backup(backup_dir)


def backed_up_epochs(backup_dir: Path) -> int:
    """Epochs a member's backup holds (0 when none is committed yet); a RunError where
    the backup is damaged."""
    backup = member_backup(backup_dir)
    return backup.epoch if backup else 0


def remove_leftovers(folder: Path, keep: str | None = None) -> None:
    """Files in a backup folder that no record names: earlier epochs' weights, staging
    files of a killed write, Keras's in-place files. ``keep``: the committed weights file."""
    if not folder.is_dir():
        return
    for path in folder.iterdir():
        name = path.name
        ours = name.startswith((STATE_PREFIX, ".tmp-", f".{METADATA}.", f"{METADATA}.", LEGACY_WEIGHTS))
        if path.is_file() and ours and name != keep and name != METADATA:
            path.unlink(missing_ok=True)


def write_backup(
    folder: Path, epoch: int, save: Callable[[Path], None], size: int, improved: bool, best: dict[str, Any] | None
) -> Backup:
    """Commit the end of ``epoch`` (1-based) in ``folder``. ``save(path)`` writes the weights
    file (about ``size`` bytes: checked free first, so a full disk stops the run before a
    file is cut short); ``improved``: this epoch is the best so far, which the record then
    says the checkpoint holds (else ``best``, the earlier record, carries over)."""
    folder.mkdir(parents=True, exist_ok=True)
    require_free_space(folder, size, f"the backup of epoch {epoch}")
    with staging(folder, prefix=".tmp-", suffix=".weights.h5") as stage:
        save(stage.path)
        weights = {"file": f"{STATE_PREFIX}{epoch:05d}.weights.h5", **digest(stage.path)}
        stage.publish(folder / weights["file"])
    if improved:
        best = {"epoch": epoch, "size": weights["size"], "sha256": weights["sha256"]}
    record = {"epoch": epoch, "batch": 0, "weights": weights, "best": best}
    write_atomic(folder / METADATA, json.dumps(record, indent=2))  # the commit
    remove_leftovers(folder, keep=weights["file"])
    return Backup(folder, epoch, folder / weights["file"], record)


def publish_checkpoint(backup: Backup, checkpoint: Path) -> None:
    """Put the backup's weights file at ``checkpoint`` (the epoch improved)."""
    link_atomic(backup.weights, checkpoint)


def restore_checkpoint(checkpoint: Path, backup: Backup | None) -> None:
    """Make ``checkpoint`` hold what ``backup``'s record says: a kill between an epoch's
    commit and the checkpoint's publish left the earlier one there. A RunError where
    the checkpoint is damaged and its epoch's weights are gone."""
    for leftover in checkpoint.parent.glob(f".{checkpoint.name}.*"):  # a killed publish's staging file
        leftover.unlink(missing_ok=True)
    best = backup.best if backup else None
    if best is None:
        return
    problem = matches(checkpoint, best)
    if problem is None:
        return
    if best["epoch"] == backup.epoch and best["sha256"] == backup.record["weights"]["sha256"]:
        publish_checkpoint(backup, checkpoint)
        return
    raise damaged(backup.folder, f"the best checkpoint {checkpoint} (epoch {best['epoch']}): {problem}")


def state_bytes(weights_bytes: int) -> int:
    """A backup file's size from the model's weights alone, before the optimizer has
    state: Adam's two slots and the file's own overhead (at most three times the weights)."""
    return 3 * weights_bytes + (1 << 20)


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


def check_free_space(folder: Path, need: int, what: str, fix: str) -> None:
    """A RunError where ``folder``'s filesystem has less than ``need`` bytes free."""
    free = shutil.disk_usage(folder).free
    if free < need:
        raise RunError(f"{what} needs about {megabytes(need)} under {str(folder)!r}, {megabytes(free)} free; {fix}")


def check_resumed_data(run: RunFolder, current: dict[str, Any]) -> None:
    """A RunError where the data ``current`` records (:func:`split_record` now) would not be
    split as when ``run`` started: resuming would train on files it validated and tested on
    before, and test on files it trained on. Files rewritten with the same split, or a
    published data set's files changed: a warning line, and the run goes on."""
    path = run.path / DATA_SPLIT
    if not path.is_file():
        print(
            f"warning: {run.path} has no {DATA_SPLIT} (a run of an earlier version): its data is taken "
            "as it is now, unchecked",
            file=sys.stderr,
            flush=True,
        )
        return
    try:
        recorded = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise RunError(
            f"{path} is unreadable ({exc}); this run cannot be checked against its data: start a new run"
        ) from None
    refusal, warnings = split_changes(recorded, current)
    for warning in warnings:
        print(warning, file=sys.stderr, flush=True)
    if refusal:
        raise RunError(
            f"{refusal}: resuming would draw its splits again. Start a new run (python -m keras_blood.train "
            f"{run.path / 'config.yaml'}), or put the folder back as it was and resume"
        )


def read_history(path: Path) -> dict[str, list[float]]:
    """A CSVLogger file as Keras's ``History.history``: column -> per-epoch values."""
    if not path.is_file():
        return {}
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    # A row cut short (a kill or a full disk mid-write) ends the record; it is never one
    # the backup holds, and a resumed run cuts it off.
    columns = [key for key in (rows[0] if rows else {}) if key != "epoch"]
    history: dict[str, list[float]] = {key: [] for key in columns}
    for row in rows:
        try:
            values = [float(row[key]) for key in columns]
        except (TypeError, ValueError):
            break
        for key, value in zip(columns, values):
            history[key].append(value)
    return history if any(history.values()) else {}


def best_value(history: dict[str, list[float]], key: str = "val_loss") -> float:
    """The lowest finite ``key`` recorded (inf: none): what a new best must beat."""
    return min((v for v in history.get(key, []) if math.isfinite(v)), default=math.inf)


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
