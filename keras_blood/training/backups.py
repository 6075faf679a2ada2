"""A training member's epoch backup: what a killed run continues from.

``backup/<member>/`` (:meth:`~keras_blood.training.runs.RunFolder.backup_dir`) holds the
weights, the optimizer's state and the epoch reached while that member trains; the second
stage of a two-stage transfer schedule backs up into its ``fine-tune/`` folder.

Nothing here is rewritten in place, so a kill at any moment leaves the last complete
epoch: the backup's weights go to a staging file renamed to ``state-<epoch>.weights.h5``,
then ``training_metadata.json`` (renamed into place too) names that file with its size
and SHA-256; it is the epoch's commit. A resumed run checks the file against the record
before trusting the epoch. The best checkpoint is published only after its epoch is
committed (a hard link of the backup's file, renamed over ``checkpoints/best.weights.h5``),
so it never holds an epoch the record does not; the record says what it must hold.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from keras_blood.files import digest, link_atomic, matches, require_free_space, staging, write_atomic
from keras_blood.training.runs import RunError

FINE_TUNE_BACKUP = "fine-tune"  # inside a member's backup: the second stage of a two-stage run
METADATA = "training_metadata.json"  # Keras's name for a backup's epoch; here also its weights file
STATE_PREFIX = "state-"  # state-<epoch>.weights.h5: a backup's weights and optimizer state
LEGACY_WEIGHTS = "latest.weights.h5"  # Keras's BackupAndRestore file, rewritten in place (older runs)


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
