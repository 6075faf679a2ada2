"""Writing outputs so that a crash never leaves a half-written one, and never overwrites.

Everything keras-blood writes for others to read (a run's records, a version, an edge
model, a CSV, a report, a download) is written into a hidden staging file or folder beside
its place and renamed there once complete (:func:`staging`, :func:`write_atomic`): a
rename on one filesystem is atomic. Output paths that must be new (a run, a report, a CSV)
are claimed with an exclusive create (:func:`new_folder`, :func:`new_file`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from keras_blood.errors import KerasBloodError


class Stage:
    """A staging file or folder; :meth:`publish` renames it into place."""

    def __init__(self, path: Path):
        self.path = path
        self.published = False

    def publish(self, target: Path) -> Path:
        """Rename the staged file over ``target``, or the staged folder onto ``target``
        (which must not exist, or be an empty folder); OSError if that fails."""
        os.replace(self.path, target) if self.path.is_file() else os.rename(self.path, target)
        self.published = True
        return target


@contextlib.contextmanager
def staging(parent: Path, prefix: str = ".tmp-", suffix: str = "", folder: bool = False) -> Iterator[Stage]:
    """A new hidden file (or folder) in ``parent``, removed when the block ends unless it
    was published. Keep ``suffix`` as the final name's ending where a reader goes by it
    (``.onnx``, ``.tflite``)."""
    if folder:
        path = Path(tempfile.mkdtemp(prefix=prefix, suffix=suffix, dir=parent))
    else:
        fd, name = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=parent)
        os.close(fd)
        path = Path(name)
    stage = Stage(path)
    try:
        yield stage
    finally:
        if not stage.published:
            if folder:
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)


def write_atomic(path: Path, content: str | bytes) -> None:
    """Replace ``path``'s content all at once (its folder is created if missing)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with staging(path.parent, prefix=f".{path.name}.") as stage:
        stage.path.write_bytes(content if isinstance(content, bytes) else content.encode())
        stage.publish(path)


def make_readable(tree: Path) -> None:
    """Folders 0755 and files 0644, so that a server running as another user can read them
    (mkdtemp makes a staging folder 0700)."""
    tree.chmod(0o755)
    for folder, subfolders, files in os.walk(tree):
        for name in subfolders:
            os.chmod(os.path.join(folder, name), 0o755)
        for name in files:
            os.chmod(os.path.join(folder, name), 0o644)


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
