"""Colour extraction (Georgetown study): keep the purple/red-stained white cell, blur.

    python -m keras_blood.color CONFIG [--set key=value ...] [--out FILE.png]

writes a figure of real samples from the config's data: original / mask / cell crop (when
data.cell_crop is on) / extracted.

The white cell's nucleus and granules are stained purple/red and strongly saturated; red
cells are a pale pink and the background is near white. So an HSV threshold finds the
white cell, an optional morphological opening drops specks (platelets, noise), a dilation
grows the mask over the cytoplasm around the nucleus, everything outside the mask is set to
``background``, and a Gaussian blur smooths the result, as the paper describes.

:func:`extract_colors` is written in TensorFlow ops only, vectorised over a batch of uint8
images, so it runs in tf.data map functions and inside the exported serving graph.
:func:`extract_colors_cv2` is the OpenCV reference it is tested against. Thresholds follow
OpenCV's 8-bit HSV convention (hue 0-179, saturation and value 0-255), and the RGB->HSV
conversion reproduces OpenCV's fixed-point arithmetic, so both masks agree bit for bit.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from keras_blood.cli import config_parser, run_main
from keras_blood.config import CellCropConfig, ColorConfig, DataConfig, load_config, read_raw
from keras_blood.sweep_config import load_sweep

if TYPE_CHECKING:
    import tensorflow as tf

# OpenCV's RGB2HSV for 8-bit images divides in 12-bit fixed point through lookup tables
# (color_hsv.simd.hpp): s = (diff * round((255 << 12) / v) + 2048) >> 12, and hue alike
# with round((180 << 12) / (6 * diff)). The same arithmetic here makes our hue and
# saturation identical to OpenCV's.
_SHIFT = 12


def _fixed_point_reciprocal(numerator: int, divisor: "tf.Tensor") -> "tf.Tensor":
    """round(numerator / divisor) for int32 divisors 1..255 (0 for 0), as OpenCV's tables.

    Computed in float32 rather than gathered from a table: a gather costs ~10x an
    elementwise op on CPU. It is exact: the float32 error, below numerator / divisor *
    2^-24 < 0.07 / divisor, is smaller than the 1 / (2 * divisor) by which any quotient
    here misses a rounding boundary (and none is a tie).
    """
    import tensorflow as tf

    quotient = numerator / tf.cast(tf.maximum(divisor, 1), tf.float32)
    return tf.where(divisor > 0, tf.cast(tf.round(quotient), tf.int32), 0)


def _hsv_planes(images: "tf.Tensor"):
    """uint8 RGB ``[..., 3]`` -> int32 ``(h, s, v)``, each ``[...]``, on OpenCV's 8-bit scale."""
    import tensorflow as tf

    # Channel planes: one transpose of the uint8 input is much cheaper than slicing the
    # innermost axis three times (or reducing over it) in int32.
    rank = images.shape.rank
    r, g, b = tf.unstack(tf.cast(tf.transpose(images, [rank - 1, *range(rank - 1)]), tf.int32))
    v = tf.maximum(tf.maximum(r, g), b)
    diff = v - tf.minimum(tf.minimum(r, g), b)
    half = 1 << (_SHIFT - 1)
    # Arithmetic right shifts, as in C (and much cheaper than integer division).
    s = tf.bitwise.right_shift(diff * _fixed_point_reciprocal(255 << _SHIFT, v) + half, _SHIFT)
    # OpenCV's branch order: red is the maximum first, then green, then blue.
    h = tf.where(v == r, g - b, tf.where(v == g, b - r + 2 * diff, r - g + 4 * diff))
    h = tf.bitwise.right_shift(h * _fixed_point_reciprocal((180 << _SHIFT) // 6, diff) + half, _SHIFT)
    h = tf.where(h < 0, h + 180, h)
    return h, s, v


def rgb_to_hsv_opencv(images: "tf.Tensor") -> "tf.Tensor":
    """uint8 RGB ``[..., 3]`` -> int32 HSV ``[..., 3]`` on OpenCV's 8-bit scale (H 0-179)."""
    import tensorflow as tf

    return tf.stack(_hsv_planes(tf.convert_to_tensor(images, tf.uint8)), axis=-1)


def _in_range(channel, low: int, high: int, top: int):
    """``low <= channel <= high``, leaving out a comparison that the range ``0..top`` of
    the channel makes always true (each one is a pass over the whole batch)."""
    import tensorflow as tf

    checks = ([channel >= low] if low > 0 else []) + ([channel <= high] if high < top else [])
    if not checks:
        return tf.ones_like(channel, tf.bool)
    return checks[0] if len(checks) == 1 else tf.logical_and(*checks)


def color_mask(images: "tf.Tensor", cfg: ColorConfig) -> "tf.Tensor":
    """The white-cell mask: bool ``[N, H, W]`` for uint8 RGB ``[N, H, W, 3]``."""
    import tensorflow as tf

    images = tf.convert_to_tensor(images, tf.uint8)
    hue, sat, val = _hsv_planes(images)
    (h_lo, h_hi), (s_lo, s_hi), (v_lo, v_hi) = cfg.hue, cfg.saturation, cfg.value
    if h_lo <= h_hi:
        hue_ok = _in_range(hue, h_lo, h_hi, 179)
    else:  # the range wraps through red (hue 179 -> 0)
        hue_ok = tf.logical_or(hue >= h_lo, hue <= h_hi)
    mask = hue_ok & _in_range(sat, s_lo, s_hi, 255) & _in_range(val, v_lo, v_hi, 255)

    # Morphology as max pooling over a k x k window (stride 1, SAME). Pooling ignores the
    # padding, which matches OpenCV's default border for erode and dilate.
    m = tf.cast(mask, tf.float32)[..., None]
    if cfg.open_size > 1:
        k = cfg.open_size
        m = -tf.nn.max_pool2d(-m, k, 1, "SAME")  # erode
        m = tf.nn.max_pool2d(m, k, 1, "SAME")  # dilate
    if cfg.dilate_size > 1:
        m = tf.nn.max_pool2d(m, cfg.dilate_size, 1, "SAME")
    return m[..., 0] > 0.5


def gaussian_kernel(size: int, sigma: float) -> np.ndarray:
    """The 1-D kernel cv2.getGaussianKernel(size, sigma) returns for sigma > 0."""
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2
    kernel = np.exp(-(x**2) / (2 * sigma**2))
    return (kernel / kernel.sum()).astype(np.float32)


def gaussian_blur(images: "tf.Tensor", size: int, sigma: float) -> "tf.Tensor":
    """Separable Gaussian blur of float ``[N, H, W, C]`` with OpenCV's default border
    (BORDER_REFLECT_101, which is tf.pad's REFLECT)."""
    import tensorflow as tf

    if size <= 1:
        return images
    kernel = gaussian_kernel(size, sigma)
    # Plain conv2d with a diagonal channel matrix: on CPU, oneDNN runs it faster than
    # depthwise_conv2d, for the same result.
    eye = np.eye(images.shape[-1], dtype=np.float32)
    rows = kernel[:, None, None, None] * eye[None, None]  # [size, 1, C, C]
    cols = kernel[None, :, None, None] * eye[None, None]  # [1, size, C, C]
    pad = size // 2
    x = tf.pad(images, [[0, 0], [pad, pad], [pad, pad], [0, 0]], mode="REFLECT")
    x = tf.nn.conv2d(x, rows, 1, "VALID")
    return tf.nn.conv2d(x, cols, 1, "VALID")


def extract_colors(images: "tf.Tensor", cfg: ColorConfig, return_mask: bool = False):
    """uint8 RGB ``[N, H, W, 3]`` -> uint8 colour-extraction images of the same shape.

    Pure TensorFlow; with ``return_mask`` also the bool mask ``[N, H, W]``.
    """
    import tensorflow as tf

    images = tf.convert_to_tensor(images, tf.uint8)
    mask = color_mask(images, cfg)
    kept = tf.where(mask[..., None], images, tf.constant(cfg.background, tf.uint8))
    blurred = gaussian_blur(tf.cast(kept, tf.float32), cfg.blur_size, cfg.blur_sigma)
    out = tf.cast(tf.clip_by_value(tf.round(blurred), 0, 255), tf.uint8)
    return (out, mask) if return_mask else out


def extract_colors_cv2(image: np.ndarray, cfg: ColorConfig, return_mask: bool = False):
    """OpenCV reference for one uint8 RGB ``[H, W, 3]`` image (same steps, same parameters)."""
    import cv2

    hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)
    (h_lo, h_hi), (s_lo, s_hi), (v_lo, v_hi) = cfg.hue, cfg.saturation, cfg.value
    if h_lo <= h_hi:
        mask = cv2.inRange(hsv, (h_lo, s_lo, v_lo), (h_hi, s_hi, v_hi))
    else:
        mask = cv2.inRange(hsv, (h_lo, s_lo, v_lo), (179, s_hi, v_hi)) | cv2.inRange(
            hsv, (0, s_lo, v_lo), (h_hi, s_hi, v_hi)
        )
    if cfg.open_size > 1:
        mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, np.ones((cfg.open_size,) * 2, np.uint8))
    if cfg.dilate_size > 1:
        mask = cv2.dilate(mask, np.ones((cfg.dilate_size,) * 2, np.uint8))
    kept = np.where(mask[..., None] > 0, image, np.uint8(cfg.background)).astype(np.uint8)
    if cfg.blur_size > 1:
        kept = cv2.GaussianBlur(kept, (cfg.blur_size,) * 2, cfg.blur_sigma)
    return (kept, mask > 0) if return_mask else kept


def cell_centres(images: "tf.Tensor", cfg: ColorConfig, window: int) -> "tf.Tensor":
    """int32 ``[N, 2]`` (row, column) of the white cell in uint8 RGB ``[N, H, W, 3]``.

    The peak of the colour mask smoothed by a Gaussian (sigma an eighth of ``window``):
    a smooth density has one clear peak in the middle of the largest stained blob (a box
    sum would have a flat top and an arbitrary corner of it), and small specks (platelets,
    stained debris) weigh little. An image with no stained pixel gives its centre.
    """
    import tensorflow as tf

    density = tf.cast(color_mask(images, cfg), tf.float32)[..., None]
    kernel = gaussian_kernel(2 * (window // 4) + 1, max(window / 8, 1.0))
    # Separable, zero-padded ("SAME"): the world past the edge holds no cell.
    density = tf.nn.conv2d(density, kernel.reshape(-1, 1, 1, 1), 1, "SAME")
    density = tf.nn.conv2d(density, kernel.reshape(1, -1, 1, 1), 1, "SAME")
    height, width = images.shape[1], images.shape[2]
    flat = tf.reshape(density, [-1, height * width])
    peak = tf.argmax(flat, axis=1, output_type=tf.int32)
    centre = tf.stack([peak // width, peak % width], axis=1)
    found = tf.reduce_max(flat, axis=1) > 0
    return tf.where(found[:, None], centre, tf.constant([[height // 2, width // 2]]))


def crop_to_cell(images: "tf.Tensor", color: ColorConfig, crop: CellCropConfig) -> "tf.Tensor":
    """uint8 RGB ``[N, H, W, 3]`` -> uint8 ``[N, crop.size, crop.size, 3]``: the window
    around each image's white cell (:func:`cell_centres`), resized if its side is not
    ``crop.size``."""
    import tensorflow as tf

    images = tf.convert_to_tensor(images, tf.uint8)
    height, width = images.shape[1], images.shape[2]
    side = crop.window_side(height, width)
    top_left = tf.cast(cell_centres(images, color, side) - side // 2, tf.float32)
    # A box of exactly side x side pixel centres, in crop_and_resize's normalised
    # coordinates: sampled at that size, every sample falls on a pixel, so the cut is exact.
    top, left = top_left[:, 0], top_left[:, 1]
    boxes = tf.stack(
        [
            top / max(height - 1, 1),
            left / max(width - 1, 1),
            (top + side - 1) / max(height - 1, 1),
            (left + side - 1) / max(width - 1, 1),
        ],
        axis=1,
    )
    windows = tf.image.crop_and_resize(
        tf.cast(images, tf.float32),
        boxes,
        tf.range(tf.shape(images)[0]),
        (side, side),
        extrapolation_value=float(color.background),
    )
    if side != crop.size:
        windows = tf.image.resize(windows, (crop.size, crop.size), method="bilinear", antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(windows), 0, 255), tf.uint8)


def make_preprocess(data: DataConfig) -> Callable | None:
    """The batch-wise uint8 -> uint8 preprocessing ``data`` asks for, or None.

    The cell crop first (it finds the cell on the whole image), then colour extraction on
    what the model will see, so kernel sizes are in the model's pixels. Used by the
    tf.data pipelines and by the exported serving graph alike, so training and serving
    see the same pixels.
    """
    steps: list[Callable] = []
    if data.cell_crop is not None:
        steps.append(lambda images: crop_to_cell(images, data.color, data.cell_crop))
    if data.color_extraction:
        steps.append(lambda images: extract_colors(images, data.color))
    if not steps:
        return None

    def preprocess(images):
        for step in steps:
            images = step(images)
        return images

    return preprocess


# ----------------------------------------------------------------------------- pictures


def sample_images(images: np.ndarray, labels: np.ndarray, per_class: int, seed: int = 0) -> np.ndarray:
    """Indices of up to ``per_class`` images of every class, seeded, in class order."""
    rng = np.random.default_rng(seed)
    picks = []
    for k in np.unique(labels):
        (idx,) = np.nonzero(labels == k)
        picks.extend(np.sort(rng.choice(idx, min(per_class, len(idx)), replace=False)))
    return np.asarray(picks, dtype=np.int64)


def color_panels(images: np.ndarray, data: DataConfig, extract: bool = True) -> dict[str, np.ndarray]:
    """Columns of uint8 pictures, by title: original, mask (white on black), the cell crop
    (when data.cell_crop is on) and, with ``extract``, the colour-extraction image."""
    mask = color_mask(images, data.color).numpy()
    panels = {"original": images, "mask": np.repeat(mask[..., None].astype(np.uint8) * 255, 3, axis=-1)}
    seen = images
    if data.cell_crop is not None:
        seen = panels["cell crop"] = crop_to_cell(images, data.color, data.cell_crop).numpy()
    if extract:
        panels["extracted"] = extract_colors(seen, data.color).numpy()
    return panels


def plot_color_extraction(
    images: np.ndarray, labels: np.ndarray, class_names: list[str], data: DataConfig, path: Path, extract: bool = True
) -> Path:
    """A PNG with one row per sample and one column per :func:`color_panels` picture."""
    from keras_blood.plots import plt

    panels = color_panels(images, data, extract)
    fig, axes = plt.subplots(len(images), len(panels), figsize=(2.5 * len(panels), 1.9 * len(images)), squeeze=False)
    for col, (title, column) in enumerate(panels.items()):
        for row, (panel, label) in enumerate(zip(column, labels)):
            ax = axes[row, col]
            ax.imshow(panel, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(title)
            if col == 0:
                ax.set_ylabel(class_names[label], fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def log_color_extraction(split, class_names: list[str], data: DataConfig, run_dir: Path, seed: int = 0) -> None:
    """What the cell crop and colour extraction do to real training images, for a run
    folder: a PNG (``color_extraction.png``) and the same pictures as TensorBoard images
    (``logs/color_extraction``)."""
    import tensorflow as tf

    picks = sample_images(split.images, split.labels, per_class=2, seed=seed)
    images, labels = split.images[picks], split.labels[picks]
    extract = data.color_extraction
    plot_color_extraction(images, labels, class_names, data, run_dir / "color_extraction.png", extract)
    with tf.summary.create_file_writer(str(run_dir / "logs" / "color_extraction")).as_default():
        for title, column in color_panels(images, data, extract).items():
            tag = f"color_extraction/{title.replace(' ', '_')}"
            tf.summary.image(tag, column, step=0, max_outputs=len(column))


def main(argv: Sequence[str] | None = None) -> Path:
    parser = config_parser(
        "python -m keras_blood.color",
        "Write a PNG of real samples from the config's data: original / mask / [cell crop /] extracted.",
    )
    parser.add_argument("--out", type=Path, default=Path("color_extraction.png"), help="PNG to write")
    parser.add_argument("--per-class", type=int, default=3, help="samples per class")
    args = parser.parse_args(argv)
    # Experiment and sweep files alike: only the data section matters here.
    if "sweep" in read_raw(args.config, args.overrides):
        config = load_sweep(args.config, args.overrides).cells[0].config
    else:
        config = load_config(args.config, args.overrides)

    from keras_blood.data import load_data

    data = load_data(config.data, config.seed)
    split = data.splits["train"]
    picks = sample_images(split.images, split.labels, args.per_class, config.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    plot_color_extraction(split.images[picks], split.labels[picks], data.class_names, config.data, args.out)
    print(args.out)
    return args.out


if __name__ == "__main__":
    sys.exit(run_main(main))
