"""A lab's own images, listed: a tree of class folders or a CSV/TSV list, with classes
matched by name and alias, groups kept together and the splits drawn. No TensorFlow here:
a bad folder is said before anything heavy starts.

Two layouts of a folder (``data.root``):

    root/<class>/**/<image>                      everything is drawn into train / val / test
    root/<split>/<class>/**/<image>              split folders: train, validation (or val,
                                                 valid), test, in any case (Kaggle's TRAIN/TEST)

With split folders, a split that has none (validation, say) is drawn from train; other
top-level folders (Kaggle's TEST_SIMPLE) are left out and named. Class folders may hold
subfolders (a patient's or a slide's). Files with an image suffix (.jpg .jpeg .png .bmp
.tif .tiff .gif, any case) are listed; others (notes, Thumbs.db) are counted and left out,
as are hidden ones.

A list file (``.csv`` or ``.tsv``) has the columns ``path,label[,group][,split]``, paths
relative to the list's folder. A header row is optional; with one, columns are found by
name (``path`` or ``file``; ``class``, else ``label``; ``group``; ``split``), so a lab
system's export with more columns reads as it is.

Classes: ``data.classes`` gives their names and order; ``data.class_aliases`` maps other
spellings onto them (``{neutrophil: [NEU, band neutrophil]}``). Names match ignoring case
and treating ``_``, ``-`` and spaces alike. Files of classes outside ``data.classes`` are
left out and counted. Without ``data.classes`` every class found is kept, in sorted order.

Groups: ``data.group_pattern`` is a regular expression searched in each file's relative
path; its first group names the patient, slide or source cell, and a group's files all go
to one split. A file it does not match is a group of its own. The drawn splits are a
seeded stratified group split (scikit-learn's StratifiedGroupKFold): ``test_fraction`` of
the groups, then ``val_fraction`` of the rest, each class in proportion.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from keras_blood.config.quote import quoted
from keras_blood.config.schema import DataConfig
from keras_blood.data.classes import ClassNames, normal
from keras_blood.data.fingerprint import files_fingerprint
from keras_blood.data.splits import SPLITS
from keras_blood.errors import DataError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".gif"})
LIST_SUFFIXES = {".csv": ",", ".tsv": "\t"}
# A split folder's name (case-insensitive) -> keras-blood's split.
SPLIT_NAMES = {"train": "train", "training": "train", "validation": "val", "val": "val", "valid": "val", "test": "test"}


@dataclass(frozen=True)
class Listing:
    """The images of a folder tree or list, each with its class, group and split."""

    root: Path  # the paths are relative to it
    files: np.ndarray  # str, relative posix paths
    labels: np.ndarray  # int32, index into class_names
    groups: np.ndarray  # str
    splits: np.ndarray  # str: train, val or test
    class_names: list[str]
    left_out: dict[str, int] = field(default_factory=dict)  # what was not listed, and how many
    warnings: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.files)

    def split(self, name: str) -> "Listing":
        rows = self.splits == name
        return dataclasses.replace(self, files=self.files[rows], labels=self.labels[rows], groups=self.groups[rows],
                                   splits=self.splits[rows])  # fmt: skip

    def counts(self) -> str:
        """One line: images per split, and what was left out."""
        sizes = ", ".join(f"{name} {np.sum(self.splits == name)}" for name in SPLITS if np.any(self.splits == name))
        text = f"{len(self.class_names)} classes {self.class_names}; {sizes} images"
        if self.left_out:
            text += "; left out: " + ", ".join(f"{what} ({count})" for what, count in self.left_out.items())
        return "; ".join([text, *self.warnings])


@dataclass
class _Found:
    files: list[str] = field(default_factory=list)
    names: list[str] = field(default_factory=list)  # class as found
    splits: list[str] = field(default_factory=list)  # "" where not given
    groups: list[str | None] = field(default_factory=list)  # None: from group_pattern
    folders: set[str] = field(default_factory=set)  # class folders, with images or not
    left_out: collections.Counter = field(default_factory=collections.Counter)


def source_listing(config: DataConfig, seed: int) -> Listing | None:
    """An image_folder source's listing (None for the other sources): what the commands
    call before TensorFlow starts, so that a bad folder is one line at once; with
    data.sources, each image_folder source's folder is checked."""
    if config.name == "sources":
        for name in config.used_sources:
            source_listing(config.source_config(name), seed)
        return None
    if config.name != "image_folder":
        return None
    root = config.given_root()
    if root is None:
        raise DataError(
            "data.name image_folder needs data.root: --set data.root=<a folder of class folders, or a .csv/.tsv list>"
        )
    return list_images(root, config.classes, config.class_aliases, config.group_pattern,
                       config.val_fraction, config.test_fraction, seed)  # fmt: skip


def list_images(
    root: Path,
    classes: Sequence[str] | None = None,
    aliases: Mapping[str, Sequence[str]] | None = None,
    group_pattern: str | None = None,
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
    seed: int = 0,
    draw: bool = True,
    min_classes: int = 2,
) -> Listing:
    """The images under ``root`` (a folder or a list file), classes matched, splits drawn.

    ``draw=False`` keeps every image in one ``test`` split (a lab's folder to evaluate on).
    A DataError (one line, saying what to fix) where nothing usable is there.
    """
    root = Path(root).expanduser()
    names = ClassNames(classes, aliases)
    if root.is_file():
        found, base = _read_list(root), root.parent
        _check_files(base, found.files, root)
    elif root.is_dir():
        found, base = _scan_folders(root), root
    else:
        raise DataError(f"data.root {quoted(str(root))} does not exist; give a folder of class folders or a .csv/.tsv list")
    if not found.files:
        raise DataError(f"{root} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}); expected {_LAYOUT}")

    kept_names = [names(name) for name in found.names]
    for name, kept in zip(found.names, kept_names):
        if kept is None:
            found.left_out[f"class {name}"] += 1
    # A class folder without images is a class too: it is named below, not lost.
    class_names = names.order([k for k in [*kept_names, *map(names, sorted(found.folders))] if k is not None])
    if len(class_names) < min_classes:
        raise DataError(f"{root}: found {len(class_names)} class(es) {class_names}; at least {min_classes} are needed ({_LAYOUT})")
    index = {name: i for i, name in enumerate(class_names)}
    rows = [i for i, kept in enumerate(kept_names) if kept is not None]
    files = np.array([found.files[i] for i in rows], dtype=str)
    labels = np.array([index[kept_names[i]] for i in rows], np.int32)
    pattern = _compile(group_pattern)
    groups = np.array([found.groups[i] or _group(pattern, found.files[i]) for i in rows], dtype=str)
    given = np.array([found.splits[i] for i in rows], dtype=str)
    if draw:
        splits = draw_splits(labels, groups, given, val_fraction, test_fraction, seed)
    else:
        splits = np.full(len(rows), "test", dtype=object).astype(str)
    listing = Listing(base, files, labels, groups, splits, class_names, dict(found.left_out))
    if draw:  # a lab's folder to evaluate on may lack some of the model's classes
        _check_classes(listing, root)
    return dataclasses.replace(listing, warnings=_shared_groups(listing) if draw else ())


_LAYOUT = "one folder of images per class (optionally under train/validation/test folders), or a .csv/.tsv list of path,label"


def _scan_folders(root: Path) -> _Found:
    found = _Found()
    tops = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    split_folders = {p: SPLIT_NAMES[p.name.casefold()] for p in tops if p.name.casefold() in SPLIT_NAMES}
    if split_folders:
        for top in tops:
            if top not in split_folders:
                found.left_out[f"folder {top.name}/ (not a split)"] += 1
        seen: dict[str, Path] = {}
        for folder, split in split_folders.items():
            if split in seen:
                raise DataError(f"{root}: two folders for the {split} split, {seen[split].name}/ and {folder.name}/; keep one")
            seen[split] = folder
            for class_folder in _class_folders(folder):
                _add_files(found, root, class_folder, split)
    else:
        for class_folder in tops:
            _add_files(found, root, class_folder, "")
    loose = [p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    if loose:
        found.left_out["images outside a class folder"] += len(loose)
    return found


def _class_folders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _add_files(found: _Found, root: Path, class_folder: Path, split: str) -> None:
    found.folders.add(class_folder.name)
    for dirpath, dirnames, filenames in os.walk(class_folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            if Path(name).suffix.lower() not in IMAGE_SUFFIXES:
                found.left_out["files without an image suffix"] += 1
                continue
            found.files.append(Path(dirpath, name).relative_to(root).as_posix())
            found.names.append(class_folder.name)
            found.splits.append(split)
            found.groups.append(None)


def _read_list(path: Path) -> _Found:
    delimiter = LIST_SUFFIXES.get(path.suffix.lower())
    if delimiter is None:
        raise DataError(f"{path}: a list must be a .csv or .tsv file (columns path,label[,group][,split])")
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f, delimiter=delimiter)
            rows = [(reader.line_num, row) for row in reader if any(cell.strip() for cell in row)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: cannot read the list ({exc}); expected UTF-8 text with columns path,label") from None
    columns: dict[str, int | None] = {"path": 0, "label": 1, "group": 2, "split": 3}
    if rows and {normal(c) for c in rows[0][1]} & {"path", "file"}:
        header = [normal(c) for c in rows[0][1]]
        for key, options in (("path", ("path", "file")), ("label", ("class", "label")), ("group", ("group",)), ("split", ("split",))):
            columns[key] = next((header.index(o) for o in options if o in header), None)
        if columns["label"] is None:
            raise DataError(f"{path}: the header {rows[0][1]} has no class or label column")
        rows = rows[1:]
    found = _Found()
    for number, row in rows:
        cell = lambda key: row[columns[key]].strip() if columns.get(key) is not None and columns[key] < len(row) else ""  # noqa: E731
        file, label = cell("path"), cell("label")
        if not file or not label:
            raise DataError(f"{path}, line {number}: {row} lacks a path or a label (columns path,label[,group][,split])")
        split = cell("split")
        if split and normal(split) not in SPLIT_NAMES:
            raise DataError(f"{path}, line {number}: split {quoted(split)} is not one of train, validation, test (or empty)")
        if Path(file).suffix.lower() not in IMAGE_SUFFIXES:
            found.left_out["files without an image suffix"] += 1
            continue
        found.files.append(Path(file).as_posix())
        found.names.append(label)
        found.splits.append(SPLIT_NAMES[normal(split)] if split else "")
        found.groups.append(cell("group") or None)
    return found


def _compile(pattern: str | None) -> re.Pattern | None:
    if not pattern:
        return None
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        raise DataError(f"data.group_pattern {quoted(pattern)} is not a regular expression ({exc})") from None
    if compiled.groups < 1:
        raise DataError(f"data.group_pattern {quoted(pattern)} has no (group); put the part that names the group in parentheses")
    return compiled


def _group(pattern: re.Pattern | None, file: str) -> str:
    match = pattern.search(file) if pattern else None
    return match.group(1) if match and match.group(1) is not None else file


def draw_splits(labels: np.ndarray, groups: np.ndarray, given: np.ndarray, val_fraction: float,
                test_fraction: float, seed: int) -> np.ndarray:  # fmt: skip
    """Each image's split: the one given, else drawn. Splits that no image is given are
    drawn from the train pool (given train, and no split given), test first."""
    splits = np.where(given == "", "train", given).astype("<U5")
    for name, fraction in (("test", test_fraction), ("val", val_fraction)):
        if np.any(given == name):
            continue
        pool = np.flatnonzero(splits == "train")
        held = _held_out(labels[pool], groups[pool], fraction, seed)
        splits[pool[held]] = name
    return splits


def _held_out(labels: np.ndarray, groups: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """A boolean mask: about ``fraction`` of the groups, each class in proportion."""
    from sklearn.model_selection import StratifiedGroupKFold

    folds = max(2, round(1 / fraction))
    distinct = len(np.unique(groups))
    if distinct < folds:
        raise DataError(
            f"{distinct} group(s) of images cannot be split {folds} ways; add images, or give "
            "train/validation/test folders, or check data.group_pattern"
        )
    # The fold is drawn over integer codes: the group names' own order must not matter.
    codes = np.unique(groups, return_inverse=True)[1]
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    _, held = next(splitter.split(np.zeros(len(labels)), labels, codes))
    mask = np.zeros(len(labels), bool)
    mask[held] = True
    return mask


def _check_classes(listing: Listing, root: Path) -> None:
    """Every class has images in every split: else one line naming the first that has none."""
    for split in SPLITS:
        present = set(listing.labels[listing.splits == split].tolist())
        for label, name in enumerate(listing.class_names):
            if label not in present:
                where = "in any file" if not np.any(listing.labels == label) else f"in the {split} split"
                fix = "add images of it, or leave it out of data.classes"
                if where != "in any file":
                    fix += " (with split folders: add its folder to that split's; else: it has too few groups to draw every split)"
                raise DataError(f"{root}: class {quoted(name)} has no images {where}; {fix}")


def _shared_groups(listing: Listing) -> tuple[str, ...]:
    """Warnings for groups with images in two splits (only given splits can do that)."""
    warnings = []
    for split in ("val", "test"):
        inside = set(listing.groups[listing.splits == split].tolist())
        shared = sorted(inside & set(listing.groups[listing.splits != split].tolist()))
        if shared:
            warnings.append(f"warning: {len(shared)} group(s) have images in {split} and another split (e.g. {shared[0]})")
    return tuple(warnings)


def _check_files(base: Path, files: list[str], list_file: Path) -> None:
    missing = [file for file in files if not (base / file).is_file()]
    if missing:
        raise DataError(
            f"{list_file}: {len(missing)} listed file(s) do not exist, e.g. {base / missing[0]}; "
            "paths are relative to the list's folder"
        )


def fingerprint(root: Path, listing: Listing) -> str:
    """What identifies the files a prepared copy was made from, without reading an image:
    every listed file's path, class, split, size and modification time."""
    rows = zip(listing.files.tolist(), listing.labels.tolist(), listing.splits.tolist())
    listed = [(f"{file}\0{label}\0{split}", listing.root / file) for file, label, split in rows]
    return files_fingerprint(([(root.name, root)] if root.is_file() else []) + listed)
