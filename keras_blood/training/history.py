"""A member's per-epoch record, ``history*.csv`` in its run folder (Keras's CSVLogger
writes it): what early stopping and the best checkpoint resume from."""

from __future__ import annotations

import csv
import math
from pathlib import Path

from keras_blood.files import write_atomic


def read_history(path: Path) -> dict[str, list[float]]:
    """A CSVLogger file as Keras's ``History.history``: column -> per-epoch values."""
    if not path.is_file():
        return {}
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    # A row cut short (a kill or a full disk mid-write) ends the record; it is never one
    # the backup holds, and a resumed run cuts it off. Keras's CSVLogger writes NA in the
    # validation columns it adds where there is no validation split: those are no record.
    columns = [key for key in (rows[0] if rows else {}) if key != "epoch" and rows[0][key] != "NA"]
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
