"""How a raw image file becomes a model input, in one place.

An exported version records its recipe in ``assets.extra/preparation.json``, e.g. for
BloodMNIST ``{"input_size": [28, 28], "center_crop_fraction": 0.5556, "resize": [28, 28],
"method": "bicubic"}``: MedMNIST's recipe, a centred 200x200 crop of the 360x363 capture
then a bicubic resize. :func:`prepare` applies it with TensorFlow ops only, so the same
function runs inside the exported ``serving_bytes`` signature and in
``python -m keras_blood.predict``, and the two agree exactly.

A file's bytes become pixels by one rule, :func:`decode`, in every reader: preparing a
lab's folder, ``predict``, ``explain``, ``evaluate --data`` and ``serving_bytes``. It reads
what OpenCV and Pillow read where TensorFlow's decoders differ (a BMP a few bytes longer
than its header says, an 8-bit BMP's palette); outside the graph, :func:`decode_file` and
:func:`decode_any` add OpenCV for TIFF and the BMPs TensorFlow does not decode at all.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import tensorflow as tf

from keras_blood.errors import ExportError
from keras_blood.preparation.limits import MAX_PIXELS, header_size, too_many_pixels  # noqa: F401  (the callers' names)

# tf.image.resize's methods; "bicubic" and "area" are what MedMNIST-style recipes use.
METHODS = ("bilinear", "bicubic", "nearest", "area", "lanczos3", "lanczos5", "gaussian", "mitchellcubic")
# TensorFlow decodes JPEG, PNG, GIF and most BMPs in-graph (:func:`decode`); TIFF and the
# BMPs it cannot read need OpenCV, outside the graph (:func:`decode_file`, :func:`decode_any`).
READABLE = "JPEG, PNG, TIFF, BMP or GIF"
TIFF_MAGIC = (b"II*\x00", b"MM\x00*")
# The BMPs the graph reads: 8, 24 or 32 bits a pixel (TensorFlow's decoder), uncompressed
# (or 32-bit bitfields), after a Windows info header (40 bytes, V3, to 124, V5). An 8-bit
# one's palette is looked up here: TensorFlow's decoder returns the palette indices as grey.
GRAPH_BMP_BITS = (8, 24, 32)
BMP_INFO_SIZES = (40, 124)
BMP_HEADER = 54  # the 14-byte file header and the 40-byte info header, up to biClrImportant
PALETTE_BYTES = 4 * 256  # blue, green, red, unused: at most 256 entries


@dataclass(frozen=True)
class Preparation:
    """Centre crop (a square, ``crop_fraction`` of the shorter side), then resize to ``size``."""

    size: tuple[int, int]
    crop_fraction: float = 1.0
    method: str = "bilinear"

    @classmethod
    def from_json(cls, recipe: dict[str, Any]) -> Preparation:
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


def decode(data: tf.Tensor, max_pixels: int | None = None) -> tf.Tensor:
    """Encoded JPEG/PNG/BMP/GIF bytes -> uint8 ``[H, W, 3]`` (greyscale and RGBA become RGB),
    in-graph: the rule every reader follows, the ``serving_bytes`` signature included.

    A BMP a few bytes longer than its pixels (some capture programs write them; OpenCV and
    Pillow read them, TensorFlow's decoder wants the exact length) is cut to its header's
    length first; an 8-bit BMP's palette is looked up. A BMP of another kind (1, 4 or 16
    bits, RLE) fails here with a line saying so: :func:`decode_any` and
    :func:`decode_file` read those through OpenCV. ``max_pixels``: an image whose header
    says it has more pixels fails before it is decoded (for callers without
    :func:`~keras_blood.preparation.limits.too_many_pixels`, which reads the file)."""
    if max_pixels is not None:
        data = _capped(data, max_pixels)
    # Only a BMP's headers are read: every other file costs one comparison more than
    # TensorFlow's own decode.
    image = tf.cond(
        _is_bmp(data),
        lambda: _decode_bmp(data),
        lambda: tf.io.decode_image(data, channels=3, dtype=tf.uint8, expand_animations=False),
    )
    image.set_shape([None, None, 3])
    return image


def _is_bmp(data: tf.Tensor) -> tf.Tensor:
    return tf.equal(tf.strings.substr(data, 0, 2), b"BM")


def _decode_bmp(data: tf.Tensor) -> tf.Tensor:
    """A BMP the graph reads, cut to its header's length, its palette looked up; one of
    another kind fails with a line saying so."""
    bmp = _bmp_fields(data)
    refused = tf.debugging.Assert(
        bmp["in_graph"],
        [
            tf.strings.format(
                "a BMP of {} bits a pixel, compression {}: the graph reads BMPs of 8, 24 or 32 bits, uncompressed; "
                "predict reads it, or re-save it as PNG",
                (bmp["bits"], bmp["compression"]),
            )
        ],
    )
    with tf.control_dependencies([refused]):
        data = tf.cond(
            _length(data) > bmp["length"],
            lambda: tf.strings.substr(data, 0, _position(bmp["length"])),
            lambda: tf.identity(data),
        )
    image = tf.io.decode_image(data, channels=3, dtype=tf.uint8, expand_animations=False)
    image.set_shape([None, None, 3])
    return tf.cond(tf.equal(bmp["bits"], 8), lambda: _palette_lookup(image, data, bmp), lambda: image)


def decode_file(data: bytes, opencv: bool = True) -> tf.Tensor:
    """Like :func:`decode`, eagerly, plus TIFF and the BMPs the graph does not read (which
    TensorFlow cannot decode) via OpenCV; ``opencv=False``: those are refused, as a source
    that keeps files' bytes as they are (decoded later in-graph) must.

    Raises ``ValueError`` with a short reason for anything that is not a readable image.
    """
    if bool(read_by_opencv(tf.constant(data))):
        if not opencv:
            kind = (
                "TIFF"
                if data[:4] in TIFF_MAGIC
                else "BMP of a kind TensorFlow does not decode (1, 4 or 16 bits, or RLE)"
            )
            raise ValueError(f"a {kind}: convert it to PNG, or use data.name image_folder, which does")
        return tf.convert_to_tensor(_decode_opencv(data))
    try:
        return decode(tf.constant(data))
    except tf.errors.InvalidArgumentError as exc:
        reason = exc.message.split("}}")[-1].split("[Op:")[0].strip().rstrip(".")
        if "Unknown image file format" in reason or not data:
            raise ValueError(f"not an image file ({READABLE} expected)") from None
        raise ValueError(f"corrupt or truncated image ({reason})") from None


def decode_any(data: tf.Tensor) -> tf.Tensor:
    """:func:`decode` plus TIFF and the BMPs the graph does not read (through OpenCV, as
    :func:`decode_file` reads them), in-graph, for tf.data pipelines. An unreadable file
    raises an op error; :func:`decode_file` says why."""
    image = tf.cond(
        read_by_opencv(data),
        lambda: tf.numpy_function(_decode_opencv, [data], tf.uint8, stateful=False),
        lambda: decode(data),
    )
    image.set_shape([None, None, 3])
    return image


def read_by_opencv(data: tf.Tensor) -> tf.Tensor:
    """True where ``data`` is a TIFF or a BMP the graph does not read: :func:`decode_any`
    and :func:`decode_file` read those through OpenCV."""
    is_tiff = tf.reduce_any(tf.strings.substr(data, 0, 4) == tf.constant(TIFF_MAGIC))
    return is_tiff | tf.cond(_is_bmp(data), lambda: ~_bmp_fields(data)["in_graph"], lambda: tf.constant(False))


def _octets(data: tf.Tensor, start: int | tf.Tensor, count: int) -> tf.Tensor:
    """``count`` bytes of ``data`` from ``start`` as int64, zeros past its end."""
    start = tf.cast(start, tf.int64)
    # Padded before the cut: substr refuses a start past the end.
    padded = tf.strings.join([tf.strings.substr(data, 0, _position(start + count)), tf.constant(b"\0" * count)])
    cut = tf.strings.substr(padded, _position(tf.minimum(start, _length(padded))), count)
    return tf.cast(tf.reshape(tf.io.decode_raw(cut, tf.uint8), [count]), tf.int64)


def _length(data: tf.Tensor) -> tf.Tensor:
    return tf.cast(tf.strings.length(data), tf.int64)


def _position(value: tf.Tensor) -> tf.Tensor:
    """An int64 offset as substr takes it (int32: a file read here is under 1 GiB)."""
    return tf.cast(tf.clip_by_value(value, 0, 2**31 - 1), tf.int32)


def _number(octets: tf.Tensor, start: int, size: int, big_endian: bool = False) -> tf.Tensor:
    places = range(size - 1, -1, -1) if big_endian else range(size)
    return tf.add_n([octets[start + i] * 256**place for i, place in zip(range(size), places)])


def _signed32(value: tf.Tensor) -> tf.Tensor:
    return tf.where(value >= 2**31, value - 2**32, value)


def _bmp_fields(data: tf.Tensor) -> dict[str, tf.Tensor]:
    """What a BMP's headers say (int64 scalars; zeros where ``data`` is too short): whether
    it is a BMP at all, whether the graph reads it, its pixels' size and the length its
    file needs (where the pixels start, plus a row padded to 4 bytes per line)."""
    head = _octets(data, 0, BMP_HEADER)
    bits, compression = _number(head, 28, 2), _number(head, 30, 4)
    width, height = _signed32(_number(head, 18, 4)), _signed32(_number(head, 22, 4))
    info_size = _number(head, 14, 4)
    in_graph = (
        tf.reduce_any(tf.equal(bits, GRAPH_BMP_BITS))
        & (info_size >= BMP_INFO_SIZES[0])
        & (info_size <= BMP_INFO_SIZES[1])
        & (tf.equal(compression, 0) | (tf.equal(compression, 3) & tf.equal(bits, 32)))
        & (width > 0)
        & tf.not_equal(height, 0)
    )
    is_bmp = tf.equal(tf.strings.substr(data, 0, 2), b"BM")
    row = (bits * width + 31) // 32 * 4
    return {
        "is_bmp": is_bmp,
        "in_graph": is_bmp & in_graph,
        "bits": bits,
        "compression": compression,
        "info_size": info_size,
        "colours": _number(head, 46, 4),
        "pixels": width * tf.abs(height),
        "length": _number(head, 10, 4) + row * tf.abs(height),
    }


def _palette_lookup(indices: tf.Tensor, data: tf.Tensor, bmp: dict[str, tf.Tensor]) -> tf.Tensor:
    """An 8-bit BMP as TensorFlow decodes it (each pixel's palette index, repeated as grey)
    -> its colours, by the palette after the info header (blue, green, red, unused)."""
    table = tf.reshape(_octets(data, 14 + bmp["info_size"], PALETTE_BYTES), [256, 4])[:, 2::-1]
    count = tf.where((bmp["colours"] == 0) | (bmp["colours"] > 256), tf.constant(256, tf.int64), bmp["colours"])
    table = tf.where(tf.range(256, dtype=tf.int64)[:, None] < count, table, 0)  # an index past the palette: black
    return tf.cast(tf.gather(table, tf.cast(indices[..., 0], tf.int32)), tf.uint8)


def header_pixels(data: tf.Tensor) -> tf.Tensor:
    """How many pixels an encoded image's header says it has (int64; 0 where the format is
    not one the graph reads, or the header is cut short), in-graph, before decoding."""
    magic = tf.strings.substr(data, 0, 4)

    def png():
        head = _octets(data, 0, 24)
        return _number(head, 16, 4, big_endian=True) * _number(head, 20, 4, big_endian=True)

    def gif():
        head = _octets(data, 0, 10)
        return _number(head, 6, 2) * _number(head, 8, 2)

    def jpeg():
        return tf.reduce_prod(tf.cast(tf.image.extract_jpeg_shape(data)[:2], tf.int64))

    def none():
        return tf.constant(0, tf.int64)

    return tf.case(
        [
            (_is_bmp(data), lambda: _bmp_fields(data)["pixels"]),
            (tf.equal(magic, b"\x89PNG"), png),
            (tf.equal(magic, b"GIF8"), gif),
            (tf.equal(tf.strings.substr(data, 0, 2), b"\xff\xd8"), jpeg),
        ],
        default=none,
    )


def _capped(data: tf.Tensor, max_pixels: int) -> tf.Tensor:
    """``data``, after an assertion that its header says at most ``max_pixels`` pixels."""
    pixels = header_pixels(data)
    message = tf.strings.format("image of {} pixels, more than the limit of {}; not decoded", (pixels, max_pixels))
    with tf.control_dependencies([tf.debugging.Assert(pixels <= max_pixels, [message])]):
        return tf.identity(data)


def _decode_opencv(data: bytes) -> np.ndarray:
    """A TIFF, or a BMP the graph does not read, -> uint8 RGB as :func:`decode` treats other
    formats: 16 bits scaled to 8, grey repeated, a palette looked up, alpha dropped. OpenCV
    premultiplies RGBA by alpha; that is undone here, since TensorFlow drops a PNG's alpha
    without compositing."""
    import cv2

    kind = "TIFF" if bytes(data[:4]) in TIFF_MAGIC else "BMP"
    # A broken file is reported to our caller; libtiff's own stderr lines are noise.
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ValueError(f"corrupt or truncated {kind} image")
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    channels = 1 if image.ndim == 2 else image.shape[2]
    if image.dtype != np.uint8 or channels not in (1, 3, 4):
        raise ValueError(
            f"unsupported {kind} ({image.dtype}, {channels} channels); 8 or 16-bit grey, RGB or RGBA expected"
        )
    if channels == 1:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if channels == 4:
        alpha = image[..., 3:].astype(np.float32)
        straight = np.where(alpha > 0, image[..., :3] * (255.0 / np.maximum(alpha, 1.0)), 0.0)
        image = np.clip(np.round(straight), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(image[..., 2::-1])  # BGR -> RGB
