"""A TFDS builder of keras_blood.data.builders, prepared once in ``data.tfds_dir`` and reused.

A prepared copy is reused while the source it was made from is unchanged; a source that
changed (another ``data.root``, files added or replaced) is prepared again. Preparing
takes a lock, so workers that start together prepare once; it first removes what a
killed prepare left (TFDS's ``incomplete.*`` folder), and on failure removes what it
created. No GCS look-up: TFDS is told not to try its bucket, and the builders never ask it
for metadata (keras_blood.data.builders.info).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from keras_blood.errors import DataError


def prepared_builder(
    name: str,
    config: Any,
    *,
    tfds_dir: Path,
    manual_dir: Path,
    accept: Callable[[Mapping[str, Any]], bool],
    check: Callable[[], None],
):
    """The builder ``name``/``config``, prepared in ``tfds_dir`` from ``manual_dir``.

    A prepared copy is used if ``accept`` takes its metadata (the source it was made
    from); else ``check()`` (which raises a DataError where the source cannot be
    prepared) and a new prepare.
    """
    import tensorflow_datasets as tfds

    import keras_blood.data.builders  # noqa: F401  (registers the builders)

    def builder():
        return tfds.builder(name, config=config, data_dir=os.fspath(tfds_dir))

    def is_prepared(b) -> bool:  # as b.is_prepared() does, without its warning when not
        return (Path(b.data_dir) / "dataset_info.json").is_file()

    def usable(b) -> bool:
        return is_prepared(b) and accept(b.info.metadata)

    current = builder()
    if usable(current):
        return current
    check()
    data_path = Path(current.data_dir)
    what = f"{name}/{current.builder_config.name}"
    with _removed_on_failure(tfds_dir, name, data_path), _locked(tfds_dir / name):
        current = builder()  # another process may have prepared it while we waited
        if usable(current):
            return current
        again = is_prepared(current)
        if again:  # made from another source; a fresh builder must not read its metadata
            shutil.rmtree(data_path)
            current = builder()
        for stale in data_path.parent.glob(f"incomplete.*_{data_path.name}"):  # from a killed prepare
            shutil.rmtree(stale, ignore_errors=True)
        print(
            f"Preparing {what} from {manual_dir} in {data_path} "
            + ("again (its source changed)" if again else "(once; later runs reuse it)"),
            flush=True,
        )
        if not sys.stderr.isatty():
            tfds.disable_progress_bar()  # redrawn bars make a log unreadable; the lines here say it
        start = time.perf_counter()
        current.download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=os.fspath(manual_dir), try_download_gcs=False)
        )
        print(f"Prepared {what} in {time.perf_counter() - start:.1f} s", flush=True)
    return builder()


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
    import tensorflow_datasets as tfds

    builder = tfds.builder_from_directory(data_dir)
    splits = [name for name in splits if name in builder.info.splits]
    everything = tfds.as_numpy(builder.as_dataset(split="+".join(splits), batch_size=-1, **as_dataset_kwargs))
    bounds = np.cumsum([0] + [builder.info.splits[name].num_examples for name in splits])

    def rows(start: int, end: int):
        if isinstance(everything, dict):
            return {key: array[start:end] for key, array in everything.items()}
        return tuple(array[start:end] for array in everything)

    return builder, {name: rows(start, end) for name, start, end in zip(splits, bounds[:-1], bounds[1:])}
