"""What a request to count white cells names, checked before TensorFlow starts: the version,
the smear fields (files, folders, globs, as :func:`~keras_blood.serving.request.expand_inputs`
reads them), the sample each field belongs to, and the folder to write.

A folder named on the command line is a sample: every field under it, however deep. A
field named alone, or found by a glob, belongs to the folder it is in. ``--sample-pattern``
names the sample from each field's path instead: the first group of a regular expression
searched in it (``'(patient\\d+)'``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from keras_blood.errors import DataError, KerasBloodError
from keras_blood.serving.request import check_request, expand_inputs

# The white cell's box over the shorter side of the captures the models were trained on: the
# median of BCCD's own white-cell boxes in its 640x480 fields, whose cuts are the Kaggle images
# (docs/counting.md has the measurement). The window cut around a found cell
# (keras_blood.serving.count.capture_window) frames it so.
CELL_FRACTION = 0.4


@dataclass(frozen=True)
class Field:
    """One smear field to count: its path, its sample, and a name for the files made from it
    (its file name's stem, made safe and unique in the request)."""

    path: str
    sample: str
    name: str


def safe_name(text: str) -> str:
    """``text`` as a file name on every system: letters, digits, ``.``, ``_`` and ``-``
    (others become ``_``), never hidden (a leading dot would hide it from a folder listing)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).lstrip(".") or "_"


def unique_names(names: Sequence[str]) -> list[str]:
    """``names``, each made :func:`safe_name` and told apart by ``-2``, ``-3``... where
    two are alike (ignoring case, as some file systems do)."""
    taken: set[str] = set()
    unique = []
    for name in map(safe_name, names):
        candidate, number = name, 1
        while candidate.casefold() in taken:
            number += 1
            candidate = f"{name}-{number}"
        taken.add(candidate.casefold())
        unique.append(candidate)
    return unique


def sample_pattern(pattern: str | None) -> re.Pattern | None:
    if pattern is None:
        return None
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        raise DataError(f"--sample-pattern '{pattern}' is not a regular expression ({exc})") from None
    if compiled.groups < 1:
        raise DataError(
            f"--sample-pattern '{pattern}' has no (group); put the part of a path that names the sample "
            "in parentheses, e.g. '(patient\\d+)'"
        )
    return compiled


def check_output(output: Path | None, overwrite: bool, inputs: Sequence[str]) -> None:
    """A KerasBloodError (one line) for an ``output`` folder that is a file, that holds
    files without ``overwrite``, or that lies inside an input folder (its crops would be
    counted as fields the next time)."""
    if output is None:
        return
    if output.exists() and not output.is_dir():
        raise KerasBloodError(f"--output {output} is a file; name a folder (it is created)")
    if output.is_dir() and any(output.iterdir()) and not overwrite:
        raise KerasBloodError(f"--output {output} is not empty; pass --overwrite to replace it, or name a new folder")
    target = output.resolve()
    for arg in inputs:
        if Path(arg).is_dir() and Path(arg).resolve() in (target, *target.parents):
            raise KerasBloodError(
                f"--output {output} is inside the input folder {arg}; its images would be counted as fields "
                "the next time: write it elsewhere"
            )


def check_count_request(
    version_dir: str | Path,
    inputs: Sequence[str],
    output: Path | None = None,
    overwrite: bool = False,
    pattern: str | None = None,
) -> list[Field]:
    """The request's fields, each with its sample; a KerasBloodError (one line) for a usage
    error: no version, no images, a path that is not there, a bad ``pattern`` or one that
    does not match a field's path, two sample folders of one name, or a bad ``output``."""
    check_output(output, overwrite, inputs)
    compiled = sample_pattern(pattern)
    entries = check_request(version_dir, inputs)
    for path, error in entries:
        if error:
            raise DataError(f"{path}: {error}")
    samples: dict[str, str] = {}
    folders: dict[str, Path] = {}  # sample -> the folder it is named after
    for arg in inputs:
        for path, _ in expand_inputs([arg]):  # which argument brought each field: its sample
            if path in samples:
                continue
            if compiled is not None:
                found = compiled.search(path)
                if found is None or found.group(1) is None:
                    raise DataError(
                        f"--sample-pattern '{pattern}' does not match {path}; its first group must name "
                        "the sample in every field's path"
                    )
                samples[path] = found.group(1)
                continue
            folder = Path(arg).resolve() if Path(arg).is_dir() else Path(path).resolve().parent
            other = folders.setdefault(folder.name, folder)
            if other != folder:
                raise DataError(
                    f"two sample folders are named {folder.name!r} ({other} and {folder}); "
                    "rename one, or name the samples with --sample-pattern"
                )
            samples[path] = folder.name
    paths = [path for path, _ in entries]
    names = unique_names([Path(path).stem for path in paths])
    return [Field(path, samples[path], name) for path, name in zip(paths, names)]
