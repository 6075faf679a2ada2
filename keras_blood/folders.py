"""Output paths that are new on every call: a run, a report, a CSV; never an existing one."""

from __future__ import annotations

import time
from pathlib import Path

from keras_blood.errors import KerasBloodError


def _claim(parent: Path, prefix: str, suffix: str, create) -> Path:
    parent.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for extra in ["", *(f"-{i}" for i in range(1, 100))]:
        path = parent / f"{prefix}{stamp}{extra}{suffix}"
        try:
            create(path)  # atomic: fails if another process took the name first
            return path
        except FileExistsError:
            continue
    raise KerasBloodError(f"could not create a new {prefix}<timestamp>{suffix} under {parent}")


def new_folder(parent: Path, prefix: str = "") -> Path:
    """Create and return ``parent/<prefix><timestamp>`` (``-1``, ``-2``... if that exists)."""
    return _claim(parent, prefix, "", lambda path: path.mkdir())


def new_file(parent: Path, prefix: str, suffix: str) -> Path:
    """Create (empty) and return ``parent/<prefix><timestamp><suffix>``, likewise never reused."""
    return _claim(parent, prefix, suffix, lambda path: path.open("x").close())
