"""What identifies the files a prepared copy was made from, without decoding an image."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable


def files_fingerprint(entries: Iterable[tuple[str, str | os.PathLike]]) -> str:
    """A digest of ``(key, path)`` pairs: each key (a relative path, with its class and
    split where those are drawn) and its file's size, modification and change times.

    The change time (``st_ctime``) moves whenever a file is written or replaced, even when
    a program puts its old size and modification time back, so such a file is noticed; a
    file that cannot be read is recorded as missing."""
    digest = hashlib.sha1()
    for key, path in entries:
        try:
            stat = os.stat(path)
            digest.update(
                f"{key}\0{stat.st_size}\0{stat.st_mtime_ns}\0{stat.st_ctime_ns}\n".encode("utf-8", "surrogateescape")
            )
        except OSError:
            digest.update(f"{key}\0missing\n".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()
