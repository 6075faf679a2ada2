"""How a raw image file becomes a model input, in one place.

An exported version records its recipe in ``assets.extra/preparation.json``, e.g. for
BloodMNIST ``{"input_size": [28, 28], "center_crop_fraction": 0.5556, "resize": [28, 28],
"method": "bicubic"}``: MedMNIST's recipe, a centred 200x200 crop of the 360x363 capture
then a bicubic resize. :func:`prepare` applies it with TensorFlow ops only, so the same
function runs inside the exported ``serving_bytes`` signature and in
``python -m keras_blood.predict``, and the two agree exactly.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from keras_blood.errors import ExportError

# tf.image.resize's methods; "bicubic" and "area" are what MedMNIST-style recipes use.
METHODS = ("bilinear", "bicubic", "nearest", "area", "lanczos3", "lanczos5", "gaussian", "mitchellcubic")
# TensorFlow decodes all but TIFF in-graph (tf.io.decode_image); TIFF needs OpenCV (decode_file,
# decode_any).
READABLE = "JPEG, PNG, TIFF, BMP or GIF"
TIFF_MAGIC = (b"II*\x00", b"MM\x00*")
# The largest image a serving-side read (predict, explain) decodes: decoding and resizing
# take tens of bytes per pixel, so a small file of huge dimensions could take gigabytes.
# A microscope capture has well under a megapixel; a camera photo a few tens.
MAX_PIXELS = 50_000_000


@dataclass(frozen=True)
class Preparation:
    """Centre crop (a square, ``crop_fraction`` of the shorter side), then resize to ``size``."""

    size: tuple[int, int]
    crop_fraction: float = 1.0
    method: str = "bilinear"

    @classmethod
    def from_json(cls, recipe: dict[str, Any]) -> "Preparation":
        """Read a ``preparation.json`` mapping; a version without a recipe just resizes."""
        size = recipe.get("resize") or recipe.get("input_size")
        fraction = float(recipe.get("center_crop_fraction", 1.0))
        method = str(recipe.get("method", "bilinear"))
        if not size or len(size) != 2 or min(size) < 1:
            raise ExportError(f"preparation {recipe}: needs input_size (or resize) [H, W]")
        if not 0.0 < fraction <= 1.0:
            raise ExportError(f"preparation {recipe}: center_crop_fraction must be in (0, 1]")
        if method not in METHODS:
            raise ExportError(f"preparation {recipe}: method {method!r} is not one of {METHODS}")
        return cls((int(size[0]), int(size[1])), fraction, method)


def prepare(image: tf.Tensor, preparation: Preparation) -> tf.Tensor:
    """uint8 ``[H, W, 3]`` of any size -> uint8 ``[*preparation.size, 3]``, graph-safe."""
    image = tf.convert_to_tensor(image, tf.uint8)
    shape = tf.shape(image)
    height, width = shape[0], shape[1]
    if preparation.crop_fraction < 1.0:
        shorter = tf.cast(tf.minimum(height, width), tf.float32)
        side = tf.maximum(1, tf.cast(tf.round(preparation.crop_fraction * shorter), tf.int32))
        image = image[
            (height - side) // 2 : (height - side) // 2 + side,
            (width - side) // 2 : (width - side) // 2 + side,
        ]
    # antialias only acts when downsampling (a large capture to 28x28, where skipping it
    # aliases fine texture into noise); PIL, which MedMNIST used, filters the same way.
    resized = tf.image.resize(image, preparation.size, method=preparation.method, antialias=True)
    resized = tf.cast(resized, tf.float32)  # "nearest" keeps uint8, the others give float32
    return tf.cast(tf.clip_by_value(tf.round(resized), 0.0, 255.0), tf.uint8)


def preparer(preparation: Preparation):
    """:func:`prepare` as one compiled function for images of every size (traced once)."""
    return tf.function(
        lambda image: prepare(image, preparation),
        input_signature=[tf.TensorSpec([None, None, 3], tf.uint8)],
        autograph=False,
    )


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
    ``option``: the command-line option that sets the limit, named in the message."""
    size = header_size(path)
    if size is None or size[0] * size[1] <= max_pixels:
        return ""
    shown = f"{size[0]}x{size[1]} pixels" if size[1] > 1 else f"{size[0]} pixels"
    return f"image of {shown}, more than the limit of {max_pixels}{f' ({option})' if option else ''}; not decoded"


def decode(data: tf.Tensor) -> tf.Tensor:
    """Encoded JPEG/PNG/BMP/GIF bytes -> uint8 ``[H, W, 3]`` (greyscale and RGBA become RGB)."""
    image = tf.io.decode_image(data, channels=3, dtype=tf.uint8, expand_animations=False)
    image.set_shape([None, None, 3])
    return image


def decode_file(data: bytes) -> tf.Tensor:
    """Like :func:`decode`, eagerly, plus TIFF (which TensorFlow cannot decode) via OpenCV.

    Raises ``ValueError`` with a short reason for anything that is not a readable image.
    """
    if data[:4] in TIFF_MAGIC:
        return tf.convert_to_tensor(_decode_tiff(data))
    try:
        return decode(tf.constant(data))
    except tf.errors.InvalidArgumentError as exc:
        reason = exc.message.split("}}")[-1].split("[Op:")[0].strip().rstrip(".")
        if "Unknown image file format" in reason or not data:
            raise ValueError(f"not an image file ({READABLE} expected)") from None
        raise ValueError(f"corrupt or truncated image ({reason})") from None


def decode_any(data: tf.Tensor) -> tf.Tensor:
    """:func:`decode` plus TIFF (through OpenCV, as :func:`decode_file` reads it), in-graph,
    for tf.data pipelines. An unreadable file raises an op error; :func:`decode_file` says why."""
    is_tiff = tf.reduce_any(tf.strings.substr(data, 0, 4) == tf.constant(TIFF_MAGIC))
    image = tf.cond(
        is_tiff,
        lambda: tf.numpy_function(_decode_tiff, [data], tf.uint8, stateful=False),
        lambda: decode(data),
    )
    image.set_shape([None, None, 3])
    return image


def _decode_tiff(data: bytes) -> np.ndarray:
    """TIFF -> uint8 RGB as :func:`decode` treats other formats: 16 bits scaled to 8, grey
    repeated, alpha dropped. OpenCV premultiplies RGBA by alpha; that is undone here, since
    TensorFlow drops a PNG's alpha without compositing."""
    import cv2

    # A broken TIFF is reported to our caller; libtiff's own stderr lines are noise.
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ValueError("corrupt or truncated TIFF image")
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    channels = 1 if image.ndim == 2 else image.shape[2]
    if image.dtype != np.uint8 or channels not in (1, 3, 4):
        raise ValueError(
            f"unsupported TIFF ({image.dtype}, {channels} channels); 8 or 16-bit grey, RGB or RGBA expected"
        )
    if channels == 1:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if channels == 4:
        alpha = image[..., 3:].astype(np.float32)
        straight = np.where(alpha > 0, image[..., :3] * (255.0 / np.maximum(alpha, 1.0)), 0.0)
        image = np.clip(np.round(straight), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(image[..., 2::-1])  # BGR -> RGB
