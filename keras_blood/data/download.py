"""Download a file with a progress bar, check its MD5, and move it into place atomically."""

from __future__ import annotations

import hashlib
import urllib.error
import urllib.request
from pathlib import Path

from keras_blood.errors import DataError
from keras_blood.files import staging

CHUNK = 1 << 20


def md5sum(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def download(url: str, dest: Path, md5: str, how_to_fix: str, timeout: float = 30.0) -> Path:
    """Fetch ``url`` to ``dest``; a file already there is taken as is (only a download
    whose MD5 matches ever gets there). ``how_to_fix`` ends the error message: where else
    the file can come from.

    TFDS's own downloader is not used: it waits on a dead network without a timeout
    (retrying ten times), and checks SHA-256 only, which MedMNIST does not publish.
    """
    if dest.is_file():
        return dest
    # Remember which folders we create, so that a failed download leaves nothing behind.
    created = [p for p in (dest.parent, *dest.parent.parents) if not p.exists()]
    dest.parent.mkdir(parents=True, exist_ok=True)
    how_to_fix = f"Download {url} by hand (MD5 {md5}) and {how_to_fix}."
    try:
        with staging(dest.parent, prefix=f".{dest.name}.", suffix=".part") as stage:
            print(f"Downloading {url} -> {dest}", flush=True)
            with urllib.request.urlopen(url, timeout=timeout) as response, stage.path.open("wb") as out:
                # Keras (and TensorFlow) only once a download starts: reading data needs neither.
                from keras.utils import Progbar

                total = int(response.headers.get("Content-Length") or 0) or None
                bar = Progbar(total, unit_name="byte")  # a terminal-friendly bar, no extra dependency
                done = 0
                while block := response.read(CHUNK):
                    out.write(block)
                    done += len(block)
                    bar.update(done)
            actual = md5sum(stage.path)
            if actual != md5:
                raise DataError(f"{url}: downloaded file has MD5 {actual}, expected {md5}. {how_to_fix}")
            return stage.publish(dest)
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        raise DataError(f"could not download {dest.name} from {url} ({exc}). {how_to_fix}") from None
    finally:
        if not dest.exists():
            for folder in created:  # deepest first
                if folder.is_dir() and not any(folder.iterdir()):
                    folder.rmdir()
