"""A TFDS builder of keras_blood.data.builders, prepared once in ``data.tfds_dir`` and reused.

A prepared copy is reused while the source it was made from is unchanged; a source that
changed (another ``data.root``, files added or replaced) is prepared again. Preparing
takes a lock, so workers that start together prepare once; it first removes what a
killed prepare left (TFDS's ``incomplete.*`` folder), and on failure removes what it
created. No GCS look-up: TFDS is told not to try its bucket, and the builders never ask it
for metadata (keras_blood.data.builder_info).

A copy is never removed while another process reads it: a run reading one holds a shared
lock on the copy's config folder (:func:`reading`) from its check to the end of its read,
and a run that prepares it again (its source changed, or it is damaged) waits for an
exclusive one. A run whose copy was prepared again between its check and its read says
so in one line (:func:`read_all`).

A damaged copy (a shard deleted or cut short, a metadata file unreadable) is found before
it is read, from what ``dataset_info.json`` records (:func:`damage`: every split's shards
and their total size), and prepared again; a shard damaged inside (a record whose CRC
fails) is found while reading it, and the error names the folder to delete. A full disk
while preparing is one line naming ``data.tfds_dir``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from keras_blood.errors import DataError
from keras_blood.files import out_of_space


def prepared_builder(
    builder_class: type,
    config: Any,
    *,
    tfds_dir: Path,
    manual_dir: Path,
    accept: Callable[[Mapping[str, Any]], bool],
    check: Callable[[], None],
):
    """The TFDS builder ``builder_class`` with ``config`` (a BuilderConfig, or the name of
    a predefined one), prepared in ``tfds_dir`` from ``manual_dir``.

    A prepared copy is used if it is intact (:func:`damage`) and ``accept`` takes its
    metadata (the source it was made from); else ``check()`` (which raises a DataError
    where the source cannot be prepared) and a new prepare.
    """
    copy = _Copy(builder_class, config, Path(tfds_dir), accept)
    with reading(copy.path):  # a copy being prepared again is not looked at half-made
        found, why = copy.state()
        if found == "usable":
            return _checked(why)
    try:
        check()
    except DataError as exc:
        if found != "damaged":
            raise
        raise DataError(
            f"the prepared copy in {copy.path} is damaged ({why}) and cannot be prepared again: {exc}"
        ) from None
    # The copy's own lock after the builder's: readers never wait on the builder's, so
    # neither waits on the other. It waits for the runs reading the copy to finish.
    name = builder_class.name
    with _removed_on_failure(copy.tfds_dir, name, copy.path), _locked(copy.tfds_dir / name), _locked(copy.path.parent):
        found, why = copy.state()  # another process may have prepared it while we waited
        if found == "usable":
            return _checked(why)
        return _checked(_prepare(copy, found, why, manual_dir))


class _Copy:
    """A builder's prepared copy in ``tfds_dir``: its folder, known before a builder reads
    (and chokes on) a damaged one, and whether it can be used."""

    def __init__(self, builder_class: type, config: Any, tfds_dir: Path, accept: Callable[[Mapping[str, Any]], bool]):
        self.builder_class, self.config, self.tfds_dir, self.accept = builder_class, config, tfds_dir, accept
        config_name = config if isinstance(config, str) else config.name
        self.path = tfds_dir / builder_class.name / config_name / str(builder_class.VERSION)
        self.what = f"{builder_class.name}/{config_name}"

    def builder(self):
        # TFDS logs every config it was not written with; a lab's folder always is one.
        with _absl_quiet("Using custom data configuration"):
            return self.builder_class(config=self.config, data_dir=os.fspath(self.tfds_dir))

    def state(self) -> tuple[str, Any]:
        """``("usable", builder)``, or ``("missing" | "damaged" | "other source", why)``."""
        if not (self.path / "dataset_info.json").is_file():
            return "missing", None
        if why := damage(self.path):
            return "damaged", why
        current = self.builder()
        return ("usable", current) if self.accept(current.info.metadata) else ("other source", None)


def _prepare(copy: _Copy, found: str, why: str | None, manual_dir: Path):
    """Prepare ``copy`` (``found`` missing, damaged for ``why``, or of another source) from
    ``manual_dir``, under its locks; returns its builder."""
    # TFDS (and TensorFlow with it) is imported only where a copy is prepared or read.
    import tensorflow_datasets as tfds

    if found != "missing":  # a fresh builder must not read its metadata
        shutil.rmtree(copy.path)
    current = copy.builder()
    for stale in copy.path.parent.glob(f"incomplete.*_{copy.path.name}"):  # from a killed prepare
        shutil.rmtree(stale, ignore_errors=True)
    reason = {
        "missing": "(once; later runs reuse it)",
        "other source": "again (its source changed)",
        "damaged": f"again (the copy there was damaged: {why})",
    }[found]
    print(f"Preparing {copy.what} from {manual_dir} in {copy.path} {reason}", flush=True)
    if not sys.stderr.isatty():
        tfds.disable_progress_bar()  # redrawn bars make a log unreadable; the lines here say it
    start = time.perf_counter()
    with _disk_errors(copy.tfds_dir, copy.what):
        current.download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=os.fspath(manual_dir), try_download_gcs=False)
        )
    print(f"Prepared {copy.what} in {time.perf_counter() - start:.1f} s", flush=True)
    return copy.builder()


# The stamp of each copy this process checked (by its resolved folder): what it must read.
_CHECKED: dict[str, int] = {}


def _checked(builder):
    """``builder``, its copy's stamp noted as the one this process checked."""
    _CHECKED[os.path.realpath(builder.data_dir)] = stamp(builder.data_dir)
    return builder


@contextlib.contextmanager
def reading(data_path: str | Path) -> Iterator[None]:
    """A shared lock on the copy in ``data_path`` (a config's version folder) while it is
    checked or read: a run preparing it again waits for it. Where the lock cannot be taken
    (no copy yet, a filesystem without locks) it is read without one."""
    try:
        fd = os.open(Path(data_path).parent, os.O_RDONLY)
    except OSError:
        fd = None
    if fd is None:
        yield
        return
    try:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)  # releases the lock


RECORD_FRAMING = 16  # bytes a TFRecord adds to each record: its length (8) and two CRC32Cs (4 + 4)
JSON_FILES = ("dataset_info.json", "features.json", "metadata.json")


def damage(data_path: Path) -> str | None:
    """Why the prepared copy in ``data_path`` is damaged, or None: from its metadata alone,
    without reading a record. The JSON files parse; each split has every shard that
    ``dataset_info.json`` lists, their sizes add up to the bytes it records for the split
    plus each record's framing (TFRecord copies); each class-label feature's names file
    has its number of classes."""
    parsed = {}
    for file in JSON_FILES:
        path = data_path / file
        if file != "metadata.json" or path.exists():
            try:
                parsed[file] = json.loads(path.read_text())
            except (OSError, ValueError) as exc:
                return f"{file} {'is missing' if isinstance(exc, FileNotFoundError) else 'is unreadable'}"
    for file, check in (("dataset_info.json", _shards_damage), ("features.json", _labels_damage)):
        try:
            if why := check(data_path, parsed[file]):
                return why
        except (AttributeError, KeyError, TypeError, ValueError):  # not the structure TFDS writes
            return f"{file} is unreadable"
    return None


def _shards_damage(data_path: Path, info: dict[str, Any]) -> str | None:
    file_format = info.get("fileFormat") or "tfrecord"
    for split in info.get("splits", []):
        lengths = [int(n) for n in split.get("shardLengths", [])]
        template = split.get("filepathTemplate") or "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}"
        digits = max(len(str(len(lengths))), 5)
        sizes = []
        for index in range(len(lengths)):
            file = template.format(
                DATASET=info["name"],
                SPLIT=split["name"],
                FILEFORMAT=file_format,
                SHARD_INDEX=f"{index:0{digits}}",
                NUM_SHARDS=f"{len(lengths):0{digits}}",
                SHARD_X_OF_Y=f"{index:0{digits}}-of-{len(lengths):0{digits}}",
            )
            try:
                sizes.append((data_path / file).stat().st_size)
            except OSError as exc:
                return f"shard {file} {'is missing' if isinstance(exc, FileNotFoundError) else 'is unreadable'}"
        if file_format == "tfrecord" and "numBytes" in split:
            expected = int(split["numBytes"]) + RECORD_FRAMING * sum(lengths)
            if sum(sizes) != expected:
                return f"the {split['name']} split's shards hold {sum(sizes)} bytes where {expected} were written"
    return None


def _labels_damage(data_path: Path, features: dict[str, Any]) -> str | None:
    for key, feature in (features.get("featuresDict", {}).get("features") or {}).items():
        classes = feature.get("classLabel", {}).get("numClasses") if isinstance(feature, dict) else None
        if classes is not None:
            try:
                names = [name for name in (data_path / f"{key}.labels.txt").read_text().splitlines() if name]
            except OSError:
                return f"{key}.labels.txt is missing"
            if len(names) != int(classes):
                return f"{key}.labels.txt names {len(names)} classes where {classes} were written"
    return None


def delete_hint(data_path: str | Path) -> str:
    return f"delete {data_path} and run again: it is prepared again from its source (data.root)"


@contextlib.contextmanager
def _disk_errors(tfds_dir: Path, what: str) -> Iterator[None]:
    """A full disk or a folder that cannot be written while preparing: one DataError."""
    import tensorflow as tf

    try:
        yield
    except Exception as exc:  # TFDS re-raises what it meets as a RuntimeError naming the split
        if out_of_space(exc):
            raise DataError(
                f"no space left on the device of data.tfds_dir ({tfds_dir}) while preparing {what}; nothing "
                "was kept: free space there or set data.tfds_dir to a folder with more room"
            ) from None
        cause = exc.__cause__ if isinstance(exc, RuntimeError) and exc.__cause__ else exc
        if (
            isinstance(cause, PermissionError | tf.errors.PermissionDeniedError)
            or getattr(cause, "errno", None) == errno.EROFS
        ):
            why = getattr(cause, "strerror", None) or " ".join(str(cause).split())[:200]
            raise DataError(
                f"cannot write to data.tfds_dir ({tfds_dir}) while preparing {what} ({why}); "
                "set data.tfds_dir to a writable folder"
            ) from None
        raise


@contextlib.contextmanager
def _absl_quiet(message: str) -> Iterator[None]:
    """Leave out absl's log records that start with ``message`` while in the block."""
    import logging

    def keep(record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(message)

    logger = logging.getLogger("absl")
    logger.addFilter(keep)
    try:
        yield
    finally:
        logger.removeFilter(keep)


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """An exclusive lock on ``folder`` (made if missing) while preparing what it holds."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot write to data.tfds_dir ({exc}); set data.tfds_dir to a writable folder") from None
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


@contextlib.contextmanager
def _removed_on_failure(tfds_dir: Path, name: str, data_path: Path) -> Iterator[None]:
    """Remove what a failed prepare made: TFDS removes its own ``incomplete.*`` folder but
    leaves the folders and config metadata it made on the way."""
    made = [
        *tfds_dir.parents,
        tfds_dir,
        tfds_dir / "downloads",
        tfds_dir / "downloads" / "extracted",
        tfds_dir / name,
        tfds_dir / name / ".config",
        data_path.parent,
    ]
    new = [path for path in made if not path.exists()]
    try:
        yield
    except BaseException:
        for path in sorted(new, key=lambda p: len(p.parts), reverse=True):  # deepest first
            if path.name == ".config":
                shutil.rmtree(path, ignore_errors=True)
            elif path.is_dir() and not any(path.iterdir()):
                path.rmdir()
        raise


def stamp(data_dir: str) -> int:
    """Changes when a prepared copy is made again: a key for memoising what was read from it."""
    return (Path(data_dir) / "dataset_info.json").stat().st_mtime_ns


def read_only(array):
    """``array``, unwritable: memoised arrays are shared by every caller."""
    array.setflags(write=False)
    return array


def read_all(data_dir: str, splits: list[str], **as_dataset_kwargs) -> tuple[Any, dict[str, Any]]:
    """``(builder, {split: arrays})``: every example of the prepared copy in ``data_dir``
    (read without any builder code), in the builder's order (it writes them unshuffled).
    ``arrays`` is what ``as_dataset(**as_dataset_kwargs)`` gives: a dict or a tuple.

    One tf.data pipeline reads all the splits: a third of the start-up time of one each.
    """
    import numpy as np
    import tensorflow as tf
    import tensorflow_datasets as tfds

    with reading(data_dir):
        checked = _CHECKED.get(os.path.realpath(data_dir))
        try:
            replaced = checked is not None and stamp(data_dir) != checked
        except OSError:
            replaced = True
        if replaced:
            raise DataError(
                f"the prepared copy in {data_dir} was prepared again by another run (its source changed) "
                "while this one started; run again to read the copy of the source as it is now"
            )
        try:
            builder = tfds.builder_from_directory(data_dir)
            splits = [name for name in splits if name in builder.info.splits]
            everything = tfds.as_numpy(builder.as_dataset(split="+".join(splits), batch_size=-1, **as_dataset_kwargs))
        except tf.errors.OpError as exc:  # DataLossError (a record's CRC), NotFoundError, ...
            reason = " ".join(exc.message.split("}}")[-1].split("[Op:")[0].split())[:200]  # TF's own words only
            raise DataError(f"the prepared copy in {data_dir} is damaged ({reason}); {delete_hint(data_dir)}") from None
    bounds = np.cumsum([0] + [builder.info.splits[name].num_examples for name in splits])

    def rows(start: int, end: int):
        if isinstance(everything, dict):
            return {key: array[start:end] for key, array in everything.items()}
        return tuple(array[start:end] for array in everything)

    return builder, {name: rows(start, end) for name, start, end in zip(splits, bounds[:-1], bounds[1:])}
