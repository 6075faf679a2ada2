"""Writing outputs so that a crash never leaves a half-written one, and never overwrites.

Everything keras-blood writes for others to read (a run's records, a version, an edge
model, a CSV, a report, a download) is written into a hidden staging file or folder beside
its place and renamed there once complete (:func:`staging`, :func:`write_atomic`): a
rename on one filesystem is atomic. Output paths that must be new (a run, a report, a CSV)
are claimed with an exclusive create (:func:`new_folder`, :func:`new_file`).
"""

from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from keras_blood.errors import KerasBloodError


def _umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it
    os.umask(mask)
    return mask


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
        path.chmod(0o777 & ~_umask())  # what mkdir() gives a new folder, not mkdtemp's 0700
    else:
        fd, name = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=parent)
        os.close(fd)
        path = Path(name)
        path.chmod(0o666 & ~_umask())  # what open() gives a new file, not mkstemp's 0600
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


# ----------------------------------------------------------------------------- full disks

NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
# How h5py, TensorFlow and the C library word a full disk or quota (errno 28 or 122).
_NO_SPACE_WORDS = ("no space left on device", "disk quota exceeded", "errno = 28", "errno = 122")


def out_of_space(exc: BaseException) -> bool:
    """Whether ``exc``, or an exception it was raised from, says a disk or quota is full:
    an OSError ENOSPC / EDQUOT, or h5py's and TensorFlow's wording of one (TensorFlow's
    ``ResourceExhaustedError`` also means out of memory; only its wording tells)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in NO_SPACE:
            return True
        if any(words in str(exc).lower() for words in _NO_SPACE_WORDS):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def megabytes(size: float) -> str:
    return f"{size / 1e6:.1f} MB"


def require_free_space(folder: Path, need: int, what: str, fix: str | None = None) -> None:
    """Stop before writing ``what`` (about ``need`` bytes) into ``folder`` where its
    filesystem has less free: a clean stop instead of a file cut short.

    Without ``fix``: an OSError ENOSPC, what the write itself would raise, so the caller's
    handling of a full disk applies. With ``fix`` (what to do, for a check made before
    anything is written): a one-line KerasBloodError naming the folder and the fix."""
    free = shutil.disk_usage(folder).free
    if free >= need:
        return
    if fix is None:
        raise OSError(errno.ENOSPC, f"{what} needs about {megabytes(need)}, {megabytes(free)} free", str(folder))
    raise KerasBloodError(f"{what} needs about {megabytes(need)} under {str(folder)!r}, {megabytes(free)} free; {fix}")


def digest(path: Path) -> dict[str, Any]:
    """``{"size": bytes, "sha256": hex}`` of a file: what a record says it must still be."""
    sha = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            sha.update(chunk)
            size += len(chunk)
    return {"size": size, "sha256": sha.hexdigest()}


def matches(path: Path, expected: dict[str, Any]) -> str | None:
    """None where ``path`` has the size and SHA-256 of ``expected`` (a :func:`digest`);
    else what is wrong, in a few words. The size is compared first: no hashing of a file
    cut short."""
    try:
        size = path.stat().st_size
    except OSError as exc:
        return f"cannot read it ({exc.strerror or exc})"
    if size != expected["size"]:
        return f"{size} bytes where {expected['size']} were written"
    try:
        actual = digest(path)["sha256"]
    except OSError as exc:
        return f"cannot read it ({exc.strerror or exc})"
    return None if actual == expected["sha256"] else "its content differs from what was written (SHA-256)"


def link_atomic(source: Path, target: Path) -> None:
    """Put ``source``'s content at ``target`` all at once, without copying where the
    filesystem allows: a hard link staged beside ``target``, renamed over it (a copy
    where hard links are refused). ``source`` stays as it is."""
    with staging(target.parent, prefix=f".{target.name}.") as stage:
        stage.path.unlink()
        try:
            os.link(source, stage.path)
        except OSError as exc:
            if exc.errno in NO_SPACE:
                raise
            shutil.copyfile(source, stage.path)
        stage.publish(target)


# ----------------------------------------------------------------------------- other processes' staging

LEGACY_STAGING_MAX_AGE_S = 24 * 3600  # staged names without host and pid: removed after a day


def host_name() -> str:
    return re.sub(r"[^A-Za-z0-9.-]", "_", socket.gethostname()) or "host"


def owned_prefix(prefix: str) -> str:
    """``<prefix><host>-<pid>-``: a :func:`staging` prefix that says whose the staged file
    is, so that :func:`remove_stale_staging` can tell one a killed process left."""
    return f"{prefix}{host_name()}-{os.getpid()}-"


def process_is_dead(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        pass
    return False


def remove_stale_staging(parent: Path, prefix: str) -> list[Path]:
    """Remove the staged files and folders in ``parent`` (named by :func:`staging` with an
    :func:`owned_prefix` of ``prefix``) that a killed process left: those of a dead
    process on this host, and legacy ones (no host and pid in the name) older than a day.
    Another host's, or a live process's, may still be in use and are left alone. Returns
    what was removed."""
    # <prefix><host>-<pid>-<tempfile's 8 random characters>[<suffix>]; the host may hold '-'.
    owned = re.compile(rf"{re.escape(prefix)}(?P<host>.+)-(?P<pid>\d+)-[a-z0-9_]{{8}}(?:-.*)?", re.DOTALL)
    removed = []
    for path in parent.glob(f"{glob.escape(prefix)}*"):
        found = owned.fullmatch(path.name)
        if found:
            stale = found["host"] == host_name() and process_is_dead(int(found["pid"]))
        else:
            try:
                stale = time.time() - path.lstat().st_mtime > LEGACY_STAGING_MAX_AGE_S
            except OSError:  # removed meanwhile
                continue
        if stale:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def make_folders(path: Path, mode: int = 0o755) -> Path:
    """``path`` and its missing parents, each made ``mode`` (readable by other users by
    default) whatever the umask; folders that exist are left as they are."""
    missing = [folder for folder in (path, *path.parents) if not folder.exists()]
    path.mkdir(parents=True, exist_ok=True)
    for folder in reversed(missing):  # outermost first
        with contextlib.suppress(FileNotFoundError):  # removed meanwhile
            folder.chmod(mode)
    return path


def detach_open_file(path: Path) -> None:
    """Point this process's open descriptors of ``path`` at an anonymous in-memory file
    (Linux; elsewhere nothing happens). A library that still holds the file after a write
    failed then writes nowhere that can fail: h5py, whose write met a full disk, writes
    again when it closes the file, and at exit that second failure crashes the process
    (exit status 139)."""
    if not hasattr(os, "memfd_create"):
        return
    target = os.path.realpath(path)
    try:
        descriptors = os.listdir("/proc/self/fd")
    except OSError:
        return
    for name in descriptors:
        try:
            link = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue
        if link in (target, f"{target} (deleted)"):
            sink = os.memfd_create("detached")
            os.dup2(sink, int(name))
            os.close(sink)
