"""How large an image may be before it is decoded, read from the file's header (Pillow, no
TensorFlow: a data source imports this before TensorFlow starts)."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

# The largest image decoded anywhere (training, predict, explain, evaluate --data, the
# serving_bytes signature): decoding and resizing take tens of bytes per pixel, so a small
# file of huge dimensions could take gigabytes. A microscope capture has well under a
# megapixel; a camera photo a few tens. data.max_pixels and --max-pixels change it.
MAX_PIXELS = 50_000_000


def header_size(path: str | Path) -> tuple[int, int] | None:
    """``(width, height)`` of an image file from its header, without decoding its pixels
    (PIL reads the header only); None where PIL does not know the file (it is then left to
    the decoder to say why it cannot read it)."""
    from PIL import Image

    with warnings.catch_warnings():  # PIL's own warning about a large image: the caller decides
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(path) as image:
                return image.size
        except Image.DecompressionBombError as exc:  # over twice PIL's own limit: it says the count only
            found = re.search(r"\((\d+) pixels\)", str(exc))
            return (int(found.group(1)), 1) if found else (2**31, 1)
        except Exception:  # noqa: BLE001  (PIL's plugins raise many types on unknown or odd headers)
            return None


def too_many_pixels(path: str | Path, max_pixels: int = MAX_PIXELS, option: str = "") -> str:
    """Why ``path`` is not decoded (its header says more than ``max_pixels`` pixels), or "".
    ``option``: the command-line option or key that sets the limit, named in the message."""
    size = header_size(path)
    if size is None or size[0] * size[1] <= max_pixels:
        return ""
    shown = f"{size[0]}x{size[1]} pixels" if size[1] > 1 else f"{size[0]} pixels"
    return f"image of {shown}, more than the limit of {max_pixels}{f' ({option})' if option else ''}; not decoded"
