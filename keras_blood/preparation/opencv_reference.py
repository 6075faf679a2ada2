"""OpenCV reference for colour extraction: the same steps as
:func:`keras_blood.preparation.color.extract_colors`, written with cv2 calls, one image at a
time. Tests check the TensorFlow version against it; benchmarks time both."""

from __future__ import annotations

import cv2
import numpy as np

from keras_blood.config.schema import ColorConfig


def extract_colors_cv2(image: np.ndarray, cfg: ColorConfig, return_mask: bool = False):
    """OpenCV reference for one uint8 RGB ``[H, W, 3]`` image (same steps, same parameters)."""
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
