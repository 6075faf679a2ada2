"""Colour extraction (keras_blood.preparation.color, cell_crop, steps): pure TF against the
OpenCV reference, the cell crop, and extraction once in the data pipeline."""

import glob

import cv2
import numpy as np
import pytest
import tensorflow as tf

from keras_blood.config.schema import CellCropConfig, ColorConfig, DataConfig
from keras_blood.data.base import Split
from keras_blood.data.pipeline import make_dataset
from keras_blood.preparation.cell_crop import cell_centres, crop_to_cell
from keras_blood.preparation.color import extract_colors, rgb_to_hsv_opencv
from keras_blood.preparation.opencv_reference import extract_colors_cv2
from keras_blood.preparation.steps import make_preprocess
from tests.helpers import cell_at

# The defaults, a wrapping hue range with every morphology step, and no blur at all.
SETTINGS = {
    "default": ColorConfig(),
    "wrapping": ColorConfig(
        hue=[150, 20], saturation=[40, 255], open_size=3, dilate_size=5, blur_size=5, blur_sigma=1.5
    ),
    "mask_only": ColorConfig(dilate_size=0, blur_size=0),
}


def test_hsv_is_opencvs_bit_for_bit_on_every_colour():
    codes = np.arange(1 << 24, dtype=np.uint32)
    cube = np.stack([codes >> 16, (codes >> 8) & 255, codes & 255], -1).astype(np.uint8)
    for part in cube.reshape(4, 1, 2048, 2048, 3):  # all 2^24 RGB colours, in four batches
        ours = rgb_to_hsv_opencv(part).numpy()[0]
        np.testing.assert_array_equal(ours, cv2.cvtColor(part[0], cv2.COLOR_RGB2HSV))


def purple_cell_on_pink(size=(40, 60)) -> np.ndarray:
    image = np.empty((*size, 3), np.uint8)
    image[:] = (225, 180, 185)  # pale pink background (saturation ~ 50)
    yy, xx = np.mgrid[: size[0], : size[1]]
    image[(yy - 20) ** 2 + (xx - 15) ** 2 < 36] = (110, 60, 200)  # purple nucleus
    return image


def test_keeps_the_stained_cell_and_suppresses_the_rest():
    image = purple_cell_on_pink()
    batch = np.stack([image, image[:, ::-1]])
    out, mask = extract_colors(batch, ColorConfig(), return_mask=True)
    assert out.dtype == tf.uint8 and out.shape == batch.shape and mask.shape == batch.shape[:3]
    mask = mask.numpy()
    assert mask[0, 20, 15] and not mask[0, 20, 50] and mask[1, 20, 44]  # per image
    assert out.numpy()[0, 20, 15, 2] > 150  # the nucleus stays purple
    assert out.numpy()[0, :, 30:].max() == 0  # far from the cell: background


def test_the_cell_is_found_where_the_stain_is_densest():
    specks = [(2, 2), (2, 57), (37, 30), (5, 40)]  # platelets and debris: more pixels in all
    images = np.stack([cell_at((20, 15), specks=specks), cell_at((33, 50)), cell_at((0, 0), radius=0)])
    images[2] = (225, 180, 185)  # no stain at all
    centres = cell_centres(images, ColorConfig(), window=24).numpy()
    np.testing.assert_array_equal(centres, [[20, 15], [33, 50], [20, 30]])  # the last: image centre


def test_cell_crop_cuts_the_window_around_the_cell_exactly():
    crop = CellCropConfig(window=0.5, size=20)  # 20 = half of 40: no resize, an exact cut
    images = np.stack([cell_at((20, 15)), cell_at((34, 53), radius=5)])
    out = crop_to_cell(images, ColorConfig(), crop).numpy()
    assert out.dtype == np.uint8 and out.shape == (2, 20, 20, 3)
    np.testing.assert_array_equal(out[0], images[0, 10:30, 5:25])
    # Near the corner: the image's part is kept, the rest is background (0).
    np.testing.assert_array_equal(out[1, :16, :17], images[1, 24:40, 43:60])
    assert out[1, 16:].max() == 0 and out[1, :, 17:].max() == 0
    # Resized to the model's size, the cell stays in the middle.
    small = crop_to_cell(images, ColorConfig(), CellCropConfig(window=0.5, size=8)).numpy()
    assert small.shape == (2, 8, 8, 3) and tuple(small[0, 4, 4]) == (110, 60, 200)


def test_cell_crop_is_numpy_slicing_of_the_padded_image_at_every_edge():
    """Windows past each edge, the last row and column included, at the Kaggle default
    (120x160, 64-pixel windows); resized, what tf.image.resize's antialiased bilinear
    gives, to within one level of rounding."""
    rng = np.random.default_rng(0)
    size = (120, 160)
    centres = [(0, 0), (119, 159), (119, 0), (0, 159), (88, 37), (100, 150)]
    centres += [tuple(rng.integers(0, size)) for _ in range(10)]
    images = np.stack([cell_at(c, radius=5, size=size) for c in centres])
    images[..., 0] ^= rng.integers(0, 8, images.shape[:3], dtype=np.uint8)  # texture: every pixel differs
    crop, color = CellCropConfig(), ColorConfig(background=7)
    side = crop.window_side(*size)
    found = cell_centres(images, color, side).numpy()
    padded = np.pad(images, [(0, 0), (side, side), (side, side), (0, 0)], constant_values=7)
    tops = found - side // 2 + side
    expected = np.stack([p[t : t + side, s : s + side] for p, (t, s) in zip(padded, tops)])
    np.testing.assert_array_equal(crop_to_cell(images, color, crop).numpy(), expected)
    for out in (40, 80):
        resized = crop_to_cell(images, color, CellCropConfig(size=out)).numpy().astype(int)
        reference = tf.image.resize(expected.astype(np.float32), (out, out), antialias=True).numpy()
        assert np.abs(resized - np.clip(np.round(reference), 0, 255)).max() <= 1


def test_preprocess_crops_first_then_extracts_colours():
    data = DataConfig(name="blood_cell_images", image_size=[40, 60], color_extraction=True)
    assert data.cell_crop == CellCropConfig() and data.model_size == (64, 64)
    images = np.stack([cell_at((20, 15), radius=8), cell_at((10, 40), radius=8)])
    out = make_preprocess(data)(images).numpy()
    cropped = crop_to_cell(images, data.color, data.cell_crop)
    np.testing.assert_array_equal(out, extract_colors(cropped, data.color).numpy())
    assert make_preprocess(data.model_copy(update={"color_extraction": False}))(images).shape == (2, 64, 64, 3)
    assert make_preprocess(DataConfig(name="blood_cell_images", cell_crop=None)) is None


def sample_files(root, per_class=4):
    files = []
    for name in ("EOSINOPHIL", "LYMPHOCYTE", "MONOCYTE", "NEUTROPHIL"):
        files += sorted(glob.glob(str(root / "TRAIN" / name / "*.jpeg")))[::300][:per_class]
    return files


@pytest.mark.parametrize("setting", SETTINGS, ids=str)
@pytest.mark.parametrize("size", [None, (24, 32), (60, 80)], ids=["full", "24x32", "60x80"])
def test_tf_and_opencv_agree_on_real_images(kaggle_root, setting, size):
    cfg = SETTINGS[setting]
    images = np.stack([cv2.cvtColor(cv2.imread(f), cv2.COLOR_BGR2RGB) for f in sample_files(kaggle_root)])
    if size is not None:
        images = np.stack([cv2.resize(im, size[::-1], interpolation=cv2.INTER_AREA) for im in images])
    ours, ours_mask = (t.numpy() for t in extract_colors(images, cfg, return_mask=True))
    reference = [extract_colors_cv2(im, cfg, return_mask=True) for im in images]
    ref, ref_mask = np.stack([r[0] for r in reference]), np.stack([r[1] for r in reference])
    assert ref_mask.mean() > 0.02  # the real cells are found at all
    assert (ours_mask == ref_mask).mean() >= 0.99
    # The blur: OpenCV rounds in 8-bit fixed point, we in float.
    diff = np.abs(ours.astype(int) - ref.astype(int))
    assert diff.mean() < 0.5 and diff.max() <= 2


def test_pipeline_extracts_once_before_the_cache():
    calls = tf.Variable(0)

    def counted(images):
        calls.assign_add(tf.shape(images)[0])
        return extract_colors(images, ColorConfig())

    images = np.stack([purple_cell_on_pink()] * 10)
    split = Split(images, np.arange(10, dtype=np.int32) % 2)
    ds = make_dataset(split, 2, 4, training=True, seed=0, preprocess=counted, preprocess_batch=3)
    epochs = [np.concatenate([x.numpy() for x, _ in ds]) for _ in range(3)]
    assert int(calls.numpy()) == 10  # once per image, not once per epoch
    assert int(ds.cardinality()) == 3  # known length: Keras needs it to end epochs quietly
    expected = extract_colors(images[:1], ColorConfig()).numpy()[0].astype(np.float32)
    for batch in epochs:
        assert batch.shape == (10, 40, 60, 3)
        np.testing.assert_array_equal(batch, np.broadcast_to(expected, batch.shape))
