"""A lab's own images, listed: a tree of class folders or a CSV/TSV list, with classes
matched by name and alias, groups kept together and the splits drawn. No TensorFlow here:
a bad folder is said before anything heavy starts.

Two layouts of a folder (``data.root``):

    root/<class>/**/<image>                      everything is drawn into train / val / test
    root/<split>/<class>/**/<image>              split folders: train, validation (or val,
                                                 valid), test, in any case (Kaggle's TRAIN/TEST)

With split folders, a split that has none (validation, say) is drawn from train; other
top-level folders (Kaggle's TEST_SIMPLE) are left out and named. Class folders may hold
subfolders (a patient's or a slide's), symlinked ones too: each folder is read once, by
its real path, and a link to a folder already read, or into or above a class folder (a
loop, or a second class for the same files), is left out and counted. Files with an image
suffix (.jpg .jpeg .png .bmp .tif .tiff .gif, any case) are listed; others (notes,
Thumbs.db) are counted and left out, as are hidden files and folders (.DS_Store, ._IMG.jpg).
A file name that is not UTF-8 (a share written by an older system) is read by its real
name and shown with its odd bytes escaped (``caf\\xe9.jpg``).

A list file (``.csv`` or ``.tsv``) has the columns ``path,label[,group][,split]``, paths
relative to the list's folder. A header row is optional; with one, columns are found by
name (``path`` or ``file``; ``class``, else ``label``; ``group``; ``split``), so a lab
system's export with more columns reads as it is. A file listed twice with one class is
read once (the second row counted); with two classes, or in two splits, it is an error,
as is a row naming a folder, or a path or class holding a line break.

Classes: ``data.classes`` gives their names and order; ``data.class_aliases`` maps other
spellings onto them (``{neutrophil: [NEU, band neutrophil]}``). Names match ignoring case,
the spaces around them, and treating ``_``, ``-`` and spaces alike: ``TRAIN/EOSINOPHIL``
and ``TEST/Eosinophil`` are one class. Files of classes outside ``data.classes`` are
left out and counted. Without ``data.classes`` every class found is kept, in sorted order.

Groups: ``data.group_pattern`` is a regular expression searched in each file's relative
path; its first group names the patient, slide or source cell, and a group's files all go
to one split. A file it does not match is a group of its own. A pattern with a nested
quantifier (``(a+)+``) is refused: Python's engine can take exponentially long on it. The drawn splits are a
seeded stratified group split (scikit-learn's StratifiedGroupKFold): ``test_fraction`` of
the groups, then ``val_fraction`` of the rest, each class in proportion.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from re import _constants as _sre  # Python's own parser: no public one; used to refuse a pattern's shape
from re import _parser

import numpy as np

from keras_blood.config.quote import quoted
from keras_blood.config.schema import DataConfig
from keras_blood.data.classes import ClassNames, check_class_name, has_line_break, normal
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

    def split(self, name: str) -> Listing:
        rows = self.splits == name
        return dataclasses.replace(
            self, files=self.files[rows], labels=self.labels[rows], groups=self.groups[rows], splits=self.splits[rows]
        )

    def counts(self) -> str:
        """One line: images per split, and what was left out."""
        sizes = ", ".join(f"{name} {np.sum(self.splits == name)}" for name in SPLITS if np.any(self.splits == name))
        text = f"{len(self.class_names)} classes {self.class_names}; {sizes} images"
        if self.left_out:
            text += "; left out: " + ", ".join(f"{what} ({count})" for what, count in self.left_out.items())
        return shown("; ".join([text, *self.warnings]))


def shown(text: str) -> str:
    """``text`` as it can be printed and stored as UTF-8: a file name's bytes that are not
    UTF-8 (held as surrogates, Python's way of reading such names) escaped as ``\\xe9``."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


@dataclass
class _Found:
    files: list[str] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)  # a list's line (0 for a folder's files)
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
            source_listing(source_config_of(config, name), seed)
        return None
    if config.name != "image_folder":
        return None
    root = config.given_root()
    if root is None:
        raise DataError(
            "data.name image_folder needs data.root: --set data.root=<a folder of class folders, or a .csv/.tsv list>"
        )
    return list_images(
        root,
        config.classes,
        config.class_aliases,
        config.group_pattern,
        config.val_fraction,
        config.test_fraction,
        seed,
        partial_splits=config.partial_splits,
        folder_classes=config.folder_classes,
    )


def source_config_of(config: DataConfig, name: str) -> DataConfig:
    """Source ``name`` of data.sources as a data config of its own (``DataConfig.source_config``),
    a lab's folder with data.classes narrowed to the classes it has images of: a source
    may lack some (a differential's basophils come from one lab only); another source has
    them, or the pooled check names the class no source has."""
    source = config.source_config(name)
    root = source.given_root()
    if source.name != "image_folder" or not source.classes or root is None:
        return source
    found = list_images(root, source.classes, source.class_aliases, draw=False, min_classes=1)
    present = sorted(set(found.labels.tolist()))
    if not present:
        others = sorted(key.removeprefix("class ") for key in found.left_out if key.startswith("class "))
        raise DataError(
            f"data.sources.{name}: none of its classes {quoted(others)} is one of data.classes "
            f"{quoted(list(source.classes))}; map them with data.class_aliases"
        )
    return source.model_copy(
        update={"classes": [found.class_names[label] for label in present], "partial_splits": True}
    )


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
    partial_splits: bool = False,
    folder_classes: str = "all",
) -> Listing:
    """The images under ``root`` (a folder or a list file), classes matched, splits drawn.

    ``draw=False`` keeps every image in one ``test`` split (a lab's folder to evaluate on).
    ``folder_classes="subset"`` (data.folder_classes): the folder may lack some of
    ``classes`` (they stay in the listing's class names, without images) and must hold no
    other class. A DataError (one line, saying what to fix) where nothing usable is there.
    """
    root = Path(root).expanduser()
    names = ClassNames(classes, aliases)
    pattern = _compile(group_pattern)
    found, base = _found_under(root)
    kept_names = [names(name) for name in found.names]
    rows = _unique_rows(found, kept_names, root)
    for i in rows:
        if kept_names[i] is None:
            if folder_classes == "subset":
                raise DataError(
                    f"{shown(str(root))}: class {quoted(found.names[i])} (e.g. {shown(found.files[i])}) is not one of "
                    f"the model's classes {quoted(names.classes or [])} (data.classes); name it as one of them, "
                    "map it with data.class_aliases, or take its images out"
                )
            found.left_out[f"class {found.names[i]}"] += 1
    # A class folder without images is a class too: it is named below, not lost.
    class_names = names.order([k for k in [*kept_names, *map(names, sorted(found.folders))] if k is not None])
    if len(class_names) < min_classes:
        raise DataError(
            f"{shown(str(root))}: found {len(class_names)} class(es) {quoted(class_names)}; "
            f"at least {min_classes} are needed ({_LAYOUT})"
        )
    rows = [i for i in rows if kept_names[i] is not None]
    if draw and folder_classes != "subset":  # a lab's folder to evaluate on may lack some of the model's classes
        _check_every_class_found(root, class_names, names, found, [kept_names[i] for i in rows])
    # Looked up as matched: TRAIN/EOSINOPHIL and TEST/Eosinophil are one class.
    index = {normal(name): i for i, name in enumerate(class_names)}
    files = np.array([found.files[i] for i in rows], dtype=str)
    labels = np.array([index[normal(kept_names[i])] for i in rows], np.int32)
    groups = np.array([found.groups[i] or _group(pattern, found.files[i]) for i in rows], dtype=str)
    given = np.array([found.splits[i] for i in rows], dtype=str)
    if draw:
        try:
            splits = draw_splits(labels, groups, given, val_fraction, test_fraction, seed)
        except DataError as exc:  # said of the folder or list it is about
            raise DataError(f"{shown(str(root))}: {exc}") from None
    else:
        splits = np.full(len(rows), "test", dtype=object).astype(str)
    listing = Listing(base, files, labels, groups, splits, class_names, dict(found.left_out))
    if draw:
        gaps = _check_classes(listing, root, partial_splits, absent_kept=folder_classes == "subset")
        absent = [name for label, name in enumerate(class_names) if not np.any(labels == label)]
        if absent:  # data.folder_classes subset
            gaps += (f"no images of {quoted(absent)}: kept in the model, with the weights model.weights gives them",)
    return dataclasses.replace(listing, warnings=(*gaps, *_shared_groups(listing)) if draw else ())


def _found_under(root: Path) -> tuple[_Found, Path]:
    """The images a list file names or class folders hold, and the folder their paths are
    relative to; a DataError where there are none."""
    if root.is_file():
        found, base = _read_list(root), root.parent
        _check_files(base, found, root)
    elif root.is_dir():
        found, base = _scan_folders(root), root
        for name in sorted(found.folders):
            check_class_name(name, shown(str(root)), "rename its folder")
    else:
        raise DataError(
            f"data.root {quoted(str(root))} does not exist; give a folder of class folders or a .csv/.tsv list"
        )
    if not found.files:
        raise DataError(f"{shown(str(root))} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}); expected {_LAYOUT}")
    return found, base


def _unique_rows(found: _Found, kept_names: list[str | None], root: Path) -> list[int]:
    """The rows to keep: a file listed twice with one class once (the second counted); a
    DataError where its rows give it two classes or two splits."""
    matched = [None if kept is None else normal(kept) for kept in kept_names]
    first: dict[str, int] = {}
    rows = []
    for i, file in enumerate(found.files):
        j = first.setdefault(os.path.normpath(file), i)
        if j == i:
            rows.append(i)
            continue
        where = f"{root}, lines {found.lines[j]} and {found.lines[i]}: {quoted(file)} is listed"
        if matched[j] != matched[i]:
            raise DataError(
                f"{where} as {quoted(found.names[j])} and as {quoted(found.names[i])}; "
                "keep the one row with its right class"
            )
        if found.splits[j] != found.splits[i]:
            raise DataError(
                f"{where} in the {found.splits[j] or 'drawn'} and the {found.splits[i] or 'drawn'} split; keep one row"
            )
        found.left_out["duplicate rows"] += 1
    return rows


def _check_every_class_found(
    root: Path, class_names: list[str], names: ClassNames, found: _Found, kept: list[str]
) -> None:
    """Every class has a file (said before any split is drawn): else one line naming the
    first without, and, where no folder or label is named so, the names found."""
    with_files = {normal(name) for name in kept}
    for name in class_names:
        if normal(name) in with_files:
            continue
        if names.classes is not None and all(names(other) != name for other in [*found.names, *found.folders]):
            seen = ClassNames(None, None).order([*found.names, *found.folders])
            raise DataError(
                f"{shown(str(root))}: class {quoted(name)} has no images in any file: no class folder or list label is "
                f"named so (found {quoted(seen)}); name its folder so, map one onto it with data.class_aliases, "
                "or leave it out of data.classes"
            )
        raise DataError(
            f"{shown(str(root))}: class {quoted(name)} has no images in any file; "
            "add images of it, or leave it out of data.classes"
        )


_LAYOUT = (
    "one folder of images per class (optionally under train/validation/test folders), or a .csv/.tsv list of path,label"
)


def _scan_folders(root: Path) -> _Found:
    found = _Found()
    tops = _subfolders(root, found)
    split_folders = {p: SPLIT_NAMES[p.name.casefold()] for p in tops if p.name.casefold() in SPLIT_NAMES}
    class_folders: list[tuple[Path, str]] = []
    if split_folders:
        for top in tops:
            if top not in split_folders:
                found.left_out[f"folder {top.name}/ (not a split)"] += 1
        seen: dict[str, Path] = {}
        for folder, split in split_folders.items():
            if split in seen:
                raise DataError(
                    f"{root}: two folders for the {split} split, {seen[split].name}/ and {folder.name}/; keep one"
                )
            seen[split] = folder
            class_folders += [(class_folder, split) for class_folder in _subfolders(folder, found)]
    else:
        class_folders = [(class_folder, "") for class_folder in tops]
    walk = _Walk([class_folder for class_folder, _ in class_folders])
    for class_folder, split in class_folders:
        _add_files(found, root, class_folder, split, walk)
    loose = [
        p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    ]
    if loose:
        found.left_out["images outside a class folder"] += len(loose)
    return found


def _subfolders(folder: Path, found: _Found) -> list[Path]:
    """The folders in ``folder``, sorted; hidden files and folders there counted."""
    kept = []
    for path in folder.iterdir():
        if path.name.startswith("."):
            found.left_out["hidden folders" if path.is_dir() else "hidden files"] += 1
        elif path.is_dir():
            kept.append(path)
    return sorted(kept)


class _Walk:
    """The folders read so far, by real path: a symlinked subfolder is followed once, and
    never one leading into or above a class folder (a loop, or the same files twice)."""

    def __init__(self, class_folders: list[Path]):
        self.class_folders = [os.path.realpath(folder) for folder in class_folders]
        self.read: set[str] = set(self.class_folders)

    def enter(self, path: str) -> bool:
        real = os.path.realpath(path)
        if real in self.read:
            return False
        if os.path.islink(path) and any(
            os.path.commonpath([real, folder]) in (real, folder) for folder in self.class_folders
        ):
            return False
        self.read.add(real)
        return True


def _add_files(found: _Found, root: Path, class_folder: Path, split: str, walk: _Walk) -> None:
    found.folders.add(class_folder.name)
    for dirpath, dirnames, filenames in os.walk(class_folder, followlinks=True):
        kept = []
        for name in sorted(dirnames):
            if name.startswith("."):
                found.left_out["hidden folders"] += 1
            elif walk.enter(os.path.join(dirpath, name)):
                kept.append(name)
            else:
                found.left_out["linked folders listed already"] += 1
        dirnames[:] = kept
        for name in sorted(filenames):
            if name.startswith("."):
                found.left_out["hidden files"] += 1
                continue
            if Path(name).suffix.lower() not in IMAGE_SUFFIXES:
                found.left_out["files without an image suffix"] += 1
                continue
            found.files.append(Path(dirpath, name).relative_to(root).as_posix())
            found.lines.append(0)
            found.names.append(class_folder.name)
            found.splits.append(split)
            found.groups.append(None)


def _read_list(path: Path) -> _Found:
    rows, columns = _list_rows(path)

    def cell(row: list[str], key: str) -> str:
        index = columns.get(key)
        return row[index].strip() if index is not None and index < len(row) else ""

    found = _Found()
    for number, row in rows:
        file, label = cell(row, "path"), cell(row, "label")
        if not file or not label:
            raise DataError(
                f"{path}, line {number}: {quoted(row)} lacks a path or a label (columns path,label[,group][,split])"
            )
        for what, text in (("path", file), ("class", label)):
            if has_line_break(text):
                raise DataError(
                    f"{path}, line {number}: the {what} {quoted(text)} holds a line break "
                    "(a quoted cell over two lines); "
                    "write it on one line"
                )
        check_class_name(label, f"{path}, line {number}", "fix that cell")
        split = cell(row, "split")
        if split and normal(split) not in SPLIT_NAMES:
            raise DataError(
                f"{path}, line {number}: split {quoted(split)} is not one of train, validation, test (or empty)"
            )
        if Path(file).suffix.lower() not in IMAGE_SUFFIXES:
            if (path.parent / file).is_dir():
                raise DataError(_a_folder(path, number, file))
            found.left_out["files without an image suffix"] += 1
            continue
        found.files.append(Path(file).as_posix())
        found.lines.append(number)
        found.names.append(label)
        found.splits.append(SPLIT_NAMES[normal(split)] if split else "")
        found.groups.append(cell(row, "group") or None)
    return found


def _list_rows(path: Path) -> tuple[list[tuple[int, list[str]]], dict[str, int | None]]:
    """A list file's non-empty rows, each with the line it starts on, and the column of
    each field (from its header where it has one)."""
    delimiter = LIST_SUFFIXES.get(path.suffix.lower())
    if delimiter is None:
        raise DataError(f"{path}: a list must be a .csv or .tsv file (columns path,label[,group][,split])")
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f, delimiter=delimiter)
            rows, last = [], 0
            for row in reader:  # numbered by the line a row starts on (a quoted cell may hold line breaks)
                if any(cell.strip() for cell in row):
                    rows.append((last + 1, row))
                last = reader.line_num
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: cannot read the list ({exc}); expected UTF-8 text with columns path,label") from None
    columns: dict[str, int | None] = {"path": 0, "label": 1, "group": 2, "split": 3}
    if rows and {normal(c) for c in rows[0][1]} & {"path", "file"}:
        header = [normal(c) for c in rows[0][1]]
        for key, options in (
            ("path", ("path", "file")),
            ("label", ("class", "label")),
            ("group", ("group",)),
            ("split", ("split",)),
        ):
            columns[key] = next((header.index(o) for o in options if o in header), None)
        if columns["label"] is None:
            raise DataError(f"{path}: the header {rows[0][1]} has no class or label column")
        rows = rows[1:]
    return rows, columns


def _a_folder(list_file: Path, number: int, file: str) -> str:
    return (
        f"{list_file}, line {number}: {quoted(file)} is a folder; a row names one image file "
        "(list the folder's images a row each, or give the folder itself as data.root)"
    )


def _compile(pattern: str | None) -> re.Pattern | None:
    if not pattern:
        return None
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        raise DataError(f"data.group_pattern {quoted(pattern)} is not a regular expression ({exc})") from None
    if compiled.groups < 1:
        raise DataError(
            f"data.group_pattern {quoted(pattern)} has no (group); put the part that names the group in parentheses"
        )
    if _nested_repeat(_parser.parse(pattern)):
        raise DataError(
            f"data.group_pattern {quoted(pattern)} has a nested quantifier (a repeated group that repeats inside, "
            "as in (a+)+), which Python's engine can take exponentially long to search in some file names; "
            "write it with one quantifier per part, e.g. '^([^_/]+)_' or '(slide\\d+)'"
        )
    return compiled


_REPEATS = {_sre.MAX_REPEAT, _sre.MIN_REPEAT, _sre.POSSESSIVE_REPEAT}


def _nested_repeat(items, repeated: bool = False) -> bool:
    """Whether a parsed pattern repeats (more than once) something that itself repeats:
    the shape that backtracks exponentially, as ``(a+)+$`` on ``aaaa...b``."""
    for op, value in items:
        if op in _REPEATS:
            _, most, body = value
            many = most > 1  # an unbounded repeat's most is MAXREPEAT
            if (many and repeated) or _nested_repeat(body, repeated or many):
                return True
            continue
        if op in (_sre.SUBPATTERN, _sre.ASSERT, _sre.ASSERT_NOT):
            inner = [value[-1]]
        elif op is _sre.BRANCH:
            inner = value[1]
        elif op is _sre.ATOMIC_GROUP:
            inner = [value]
        elif op is _sre.GROUPREF_EXISTS:
            inner = [branch for branch in value[1:] if branch is not None]
        else:
            inner = []
        if any(_nested_repeat(branch, repeated) for branch in inner):
            return True
    return False


def _group(pattern: re.Pattern | None, file: str) -> str:
    match = pattern.search(file) if pattern else None
    return match.group(1) if match and match.group(1) is not None else file


def draw_splits(
    labels: np.ndarray, groups: np.ndarray, given: np.ndarray, val_fraction: float, test_fraction: float, seed: int
) -> np.ndarray:
    """Each image's split: the one given, else drawn. Splits that no image is given are
    drawn from the train pool (given train, and no split given), test first; a fraction of 0
    draws none (every image of so few trains)."""
    splits = np.where(given == "", "train", given).astype("<U5")
    for name, fraction in (("test", test_fraction), ("val", val_fraction)):
        if np.any(given == name) or not fraction:
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
    with warnings.catch_warnings():
        # "The least populated class in y has only N members": a rare class is drawn as it
        # can be; what each split lacks is checked and said afterwards.
        warnings.filterwarnings("ignore", "The least populated class", UserWarning)
        try:
            _, held = next(splitter.split(np.zeros(len(labels)), labels, codes))
        except ValueError:  # scikit-learn's: every class has fewer images than folds
            raise DataError(
                f"every class has fewer than {folds} images (at most {np.bincount(labels).max()}): too few to draw "
                f"{fraction:g} of each for a split; add images, or give train/validation/test folders"
            ) from None
    mask = np.zeros(len(labels), bool)
    mask[held] = True
    return mask


def _check_classes(
    listing: Listing, root: Path, partial_splits: bool = False, absent_kept: bool = False
) -> tuple[str, ...]:
    """Every class has images in every split drawn or given: else one line naming the first that
    has none. With ``partial_splits``, only training images are required; the gaps in validation
    and test are warnings, returned. ``absent_kept``: a class without any image is no gap."""
    gaps = []
    drawn = set(listing.splits.tolist())
    for split in SPLITS:
        if split not in drawn and split != "train":  # data.val_fraction / test_fraction 0
            continue
        present = set(listing.labels[listing.splits == split].tolist())
        for label, name in enumerate(listing.class_names):
            if absent_kept and not np.any(listing.labels == label):
                continue
            if label not in present:
                if partial_splits and split != "train" and np.any(listing.labels == label):
                    gaps.append(f"warning: class {quoted(name)} has no images in the {split} split")
                    continue
                where = "in any file" if not np.any(listing.labels == label) else f"in the {split} split"
                fix = "add images of it, or leave it out of data.classes"
                if where != "in any file":
                    fix += (
                        " (with split folders: add its folder to that split's; "
                        "else: it has too few groups to draw every split)"
                    )
                raise DataError(f"{root}: class {quoted(name)} has no images {where}; {fix}")
    return tuple(gaps)


def _shared_groups(listing: Listing) -> tuple[str, ...]:
    """Warnings for groups with images in two splits (only given splits can do that)."""
    warnings = []
    for split in ("val", "test"):
        inside = set(listing.groups[listing.splits == split].tolist())
        shared = sorted(inside & set(listing.groups[listing.splits != split].tolist()))
        if shared:
            warnings.append(
                f"warning: {len(shared)} group(s) have images in {split} and another split (e.g. {shared[0]})"
            )
    return tuple(warnings)


def _check_files(base: Path, found: _Found, list_file: Path) -> None:
    missing = [i for i, file in enumerate(found.files) if not (base / file).is_file()]
    for i in missing:
        if (base / found.files[i]).is_dir():
            raise DataError(_a_folder(list_file, found.lines[i], found.files[i]))
    if missing:
        raise DataError(
            f"{list_file}: {len(missing)} listed file(s) do not exist, "
            f"e.g. {shown(str(base / found.files[missing[0]]))}; "
            "paths are relative to the list's folder"
        )


def fingerprint(root: Path, listing: Listing) -> str:
    """What identifies the files a prepared copy was made from, without reading an image:
    every listed file's path, class, split, size and modification and change times, and a
    list file's own. The same whatever spelling names the folder or list (relative, through
    a symlink), as the prepared copy's config is: else each spelling prepares it again."""
    root = Path(root).expanduser().resolve()
    rows = zip(listing.files.tolist(), listing.labels.tolist(), listing.splits.tolist())
    listed = [(f"{file}\0{label}\0{split}", listing.root / file) for file, label, split in rows]
    return files_fingerprint(([(root.name, root)] if root.is_file() else []) + listed)
