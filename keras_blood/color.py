"""Colour extraction (Georgetown study): keep the purple/red-stained white cell, blur.

    python -m keras_blood.color CONFIG [--set key=value ...] [--out FILE.png]

writes a figure of real samples from the config's data: original / mask / extracted.

The white cell's nucleus and granules are stained purple/red and strongly saturated; red
cells are a pale pink and the background is near white. So an HSV threshold finds the
white cell, a morphological opening drops specks (platelets, noise), a dilation grows the
mask over the cytoplasm around the nucleus, everything outside the mask is set to
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
from keras_blood.config import ColorConfig, DataConfig, load_config

if TYPE_CHECKING:
    import tensorflow as tf

# OpenCV's RGB2HSV for 8-bit images divides through lookup tables in 12-bit fixed point
# (color_hsv.simd.hpp); the same tables here make our hue and saturation identical to it.
_SHIFT = 12
_DIVISORS = np.arange(1, 256, dtype=np.float64)
_SDIV = np.concatenate([[0], np.round((255 << _SHIFT) / _DIVISORS)]).astype(np.int32)
_HDIV = np.concatenate([[0], np.round((180 << _SHIFT) / (6.0 * _DIVISORS))]).astype(np.int32)


def rgb_to_hsv_opencv(images: "tf.Tensor") -> "tf.Tensor":
    """uint8 RGB ``[..., 3]`` -> int32 HSV ``[..., 3]`` on OpenCV's 8-bit scale (H 0-179)."""
    import tensorflow as tf

    x = tf.cast(images, tf.int32)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    v = tf.reduce_max(x, axis=-1)
    diff = v - tf.reduce_min(x, axis=-1)
    half = 1 << (_SHIFT - 1)
    s = (diff * tf.gather(_SDIV, v) + half) // (1 << _SHIFT)
    # OpenCV's branch order: red is the maximum first, then green, then blue.
    h = tf.where(v == r, g - b, tf.where(v == g, b - r + 2 * diff, r - g + 4 * diff))
    h = (h * tf.gather(_HDIV, diff) + half) // (1 << _SHIFT)  # floor division, as >> in C
    h = tf.where(h < 0, h + 180, h)
    return tf.stack([h, s, v], axis=-1)


def _in_range(channel, low: int, high: int):
    import tensorflow as tf

    return tf.logical_and(channel >= low, channel <= high)


def color_mask(images: "tf.Tensor", cfg: ColorConfig) -> "tf.Tensor":
    """The white-cell mask: bool ``[N, H, W]`` for uint8 RGB ``[N, H, W, 3]``."""
    import tensorflow as tf

    hsv = rgb_to_hsv_opencv(images)
    (h_lo, h_hi), (s_lo, s_hi), (v_lo, v_hi) = cfg.hue, cfg.saturation, cfg.value
    if h_lo <= h_hi:
        hue_ok = _in_range(hsv[..., 0], h_lo, h_hi)
    else:  # the range wraps through red (hue 179 -> 0)
        hue_ok = tf.logical_or(hsv[..., 0] >= h_lo, hsv[..., 0] <= h_hi)
    mask = hue_ok & _in_range(hsv[..., 1], s_lo, s_hi) & _in_range(hsv[..., 2], v_lo, v_hi)

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
    channels = images.shape[-1]
    pad = size // 2
    kernel = tf.constant(gaussian_kernel(size, sigma))
    x = tf.pad(images, [[0, 0], [pad, pad], [pad, pad], [0, 0]], mode="REFLECT")
    rows = tf.tile(tf.reshape(kernel, [size, 1, 1, 1]), [1, 1, channels, 1])
    cols = tf.tile(tf.reshape(kernel, [1, size, 1, 1]), [1, 1, channels, 1])
    x = tf.nn.depthwise_conv2d(x, rows, [1, 1, 1, 1], "VALID")
    return tf.nn.depthwise_conv2d(x, cols, [1, 1, 1, 1], "VALID")


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


def make_preprocess(data: DataConfig) -> Callable | None:
    """The batch-wise uint8 -> uint8 preprocessing ``data`` asks for, or None.

    Used by the tf.data pipelines and by the exported serving graph alike, so training
    and serving see the same pixels.
    """
    if not data.color_extraction:
        return None
    cfg = data.color
    return lambda images: extract_colors(images, cfg)


# ----------------------------------------------------------------------------- pictures


def sample_images(images: np.ndarray, labels: np.ndarray, per_class: int, seed: int = 0) -> np.ndarray:
    """Indices of up to ``per_class`` images of every class, seeded, in class order."""
    rng = np.random.default_rng(seed)
    picks = []
    for k in np.unique(labels):
        (idx,) = np.nonzero(labels == k)
        picks.extend(np.sort(rng.choice(idx, min(per_class, len(idx)), replace=False)))
    return np.asarray(picks, dtype=np.int64)


def color_panels(images: np.ndarray, cfg: ColorConfig) -> np.ndarray:
    """uint8 ``[N, 3, H, W, 3]``: original, mask (white on black), extracted."""
    extracted, mask = extract_colors(images, cfg, return_mask=True)
    mask_rgb = np.repeat(mask.numpy()[..., None].astype(np.uint8) * 255, 3, axis=-1)
    return np.stack([images, mask_rgb, extracted.numpy()], axis=1)


def plot_color_extraction(
    images: np.ndarray, labels: np.ndarray, class_names: list[str], cfg: ColorConfig, path: Path
) -> Path:
    """A PNG with one row per sample: original / mask / extracted."""
    from keras_blood.plots import plt

    panels = color_panels(images, cfg)
    fig, axes = plt.subplots(len(panels), 3, figsize=(7.5, 1.9 * len(panels)), squeeze=False)
    for row, (triple, label) in enumerate(zip(panels, labels)):
        for col, (panel, title) in enumerate(zip(triple, ("original", "mask", "extracted"))):
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


def log_color_extraction(split, class_names: list[str], cfg: ColorConfig, run_dir: Path, seed: int = 0) -> None:
    """What colour extraction does to real training images, for a run folder: a PNG
    (``color_extraction.png``) and the same panels as TensorBoard images
    (``logs/color_extraction``)."""
    import tensorflow as tf

    picks = sample_images(split.images, split.labels, per_class=2, seed=seed)
    images, labels = split.images[picks], split.labels[picks]
    plot_color_extraction(images, labels, class_names, cfg, run_dir / "color_extraction.png")
    panels = color_panels(images, cfg)
    with tf.summary.create_file_writer(str(run_dir / "logs" / "color_extraction")).as_default():
        for col, name in enumerate(("original", "mask", "extracted")):
            tf.summary.image(f"color_extraction/{name}", panels[:, col], step=0, max_outputs=len(panels))


def main(argv: Sequence[str] | None = None) -> Path:
    parser = config_parser(
        "python -m keras_blood.color",
        "Write a PNG of real samples from the config's data: original / mask / extracted.",
    )
    parser.add_argument("--out", type=Path, default=Path("color_extraction.png"), help="PNG to write")
    parser.add_argument("--per-class", type=int, default=3, help="samples per class")
    args = parser.parse_args(argv)
    config = load_config(args.config, args.overrides)

    from keras_blood.data import load_data

    data = load_data(config.data, config.seed)
    split = data.splits["train"]
    picks = sample_images(split.images, split.labels, args.per_class, config.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    plot_color_extraction(split.images[picks], split.labels[picks], data.class_names, config.data.color, args.out)
    print(args.out)
    return args.out


if __name__ == "__main__":
    sys.exit(run_main(main))
