"""What a request to classify or explain files names, checked before TensorFlow starts: the
version, the image files (files, folders searched recursively, glob patterns) and the CSV
to write. The commands call :func:`check_request` first, so a bad argument is one line in
a fraction of a second; :func:`keras_blood.serving.predict.predict` and
:func:`keras_blood.evaluation.gradcam.explain_files` call it too."""

from __future__ import annotations

import glob
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from keras_blood.config.paths import SAVED_MODEL
from keras_blood.errors import ExportError, KerasBloodError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".gif"}


def find_images(folder: Path) -> Iterator[Path]:
    """Image files under ``folder``, sorted, skipping hidden files and folders (.DS_Store, ._x.jpg)."""
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_SUFFIXES:
                yield Path(root) / name


def _exists(path: str) -> bool:
    try:
        return Path(path).exists()
    except OSError:  # a name too long to look up: no such file, as far as the user goes
        return False


def expand_inputs(args: Sequence[str]) -> list[tuple[str, str]]:
    """``(path, error)`` per input file, in order, each once; ``error`` is "" when it exists.

    A named file is taken whatever its suffix (and fails later if it is no image); a
    folder contributes its image files only.
    """
    entries: dict[str, str] = {}
    for arg in args:
        if _exists(arg):
            matches = [arg]
        elif glob.has_magic(arg):
            matches = sorted(glob.glob(arg, recursive=True))
        else:
            matches = []
        if not matches:
            missing = "no file matches this pattern" if glob.has_magic(arg) else "no such file or folder"
            entries.setdefault(arg, missing)
        for match in matches:
            found = find_images(Path(match)) if Path(match).is_dir() else [Path(match)]
            for path in found:
                entries.setdefault(str(path), "")
    return list(entries.items())


def check_request(
    version_dir: str | Path, inputs: Sequence[str], output: Path | None = None, overwrite: bool = False
) -> list[tuple[str, str]]:
    """The request's files as ``(path, error)``; a KerasBloodError (one line) for a usage
    error: an ``output`` that is a folder or exists without ``overwrite``, no files at all,
    or a ``version_dir`` that is no exported version."""
    if output is not None and output.is_dir():
        raise KerasBloodError(f"--output {output} is a folder; name a CSV file")
    if output is not None and output.exists() and not overwrite:
        raise KerasBloodError(f"--output {output} already exists; pass --overwrite to replace it")
    entries = expand_inputs(inputs)
    if not entries:
        raise KerasBloodError(f"no image files found in {' '.join(inputs)}")
    if not (Path(version_dir) / SAVED_MODEL).is_file():
        raise ExportError(f"{version_dir} is not a published model version (no saved_model.pb)")
    return entries
