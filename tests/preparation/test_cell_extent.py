"""The extent-sized cell crop and stain normalisation (keras_blood.preparation.cell_crop, steps)."""

import numpy as np

from keras_blood.config.schema import CellCropConfig, ColorConfig, DataConfig
from keras_blood.preparation.cell_crop import crop_to_cell, crop_to_cell_extent
from keras_blood.preparation.steps import (
    LOG_LMS_TO_LAB,
    REINHARD_MEAN,
    RGB_TO_LMS,
    make_preprocess,
    normalize_stain,
)
from tests.helpers import cell_at

PURPLE = (110, 60, 200)
# No dilation: the mask is exactly the disc, so its area is pi r^2.
COLOR = ColorConfig(dilate_size=0, blur_size=0)


def disc_share(crops: np.ndarray) -> np.ndarray:
    """The fraction of each crop that the purple disc covers (resampled edge pixels count
    when nearer purple than pink)."""
    return (crops[..., 0] < (PURPLE[0] + 225) / 2).mean(axis=(1, 2))


def test_extent_window_scales_with_the_cell():
    # The same cell at two magnifications (radius 12 and 18), anywhere in the frame.
    images = np.stack([cell_at((50, 60), radius=12, size=(120, 160)), cell_at((70, 100), radius=18, size=(120, 160))])
    crop = CellCropConfig(fit="extent", extent_scale=2.0, size=48)
    out = crop_to_cell_extent(images, COLOR, crop).numpy()
    assert out.shape == (2, 48, 48, 3) and out.dtype == np.uint8
    # Side = 2 sqrt(pi r^2): the disc covers pi r^2 / side^2 = 1/4 of either crop ...
    np.testing.assert_allclose(disc_share(out), 0.25, atol=0.02)
    assert tuple(out[0, 24, 24]) == PURPLE and tuple(out[1, 24, 24]) == PURPLE  # ... centred
    # ... where a fixed window shows the larger cell 2.25 times larger.
    fixed = disc_share(crop_to_cell(images, COLOR, CellCropConfig(window=0.5, size=48)).numpy())
    assert fixed[1] / fixed[0] > 2.0
    # extent_scale sets how much margin the cell gets.
    wider = crop_to_cell_extent(images, COLOR, crop.model_copy(update={"extent_scale": 3.0})).numpy()
    np.testing.assert_allclose(disc_share(wider), 0.25 * (2 / 3) ** 2, atol=0.02)


def test_extent_window_is_bounded_without_stain():
    blank = np.full((1, 120, 160, 3), (225, 180, 185), np.uint8)  # nothing stained
    out = crop_to_cell_extent(blank, COLOR, CellCropConfig(fit="extent", size=16)).numpy()
    assert out.shape == (1, 16, 16, 3) and (out == (225, 180, 185)).all()  # the centre, inside the frame


def test_stain_normalisation_removes_a_colour_cast():
    image = cell_at((20, 15), radius=8).astype(np.float32)
    # Another lab: pinker, brighter, less contrast (an affine change per channel).
    other = np.clip(image * [0.8, 0.7, 0.75] + [60, 50, 40], 0, 255).round()
    out = normalize_stain(np.stack([image, other]).astype(np.uint8)).numpy().astype(int)
    assert np.abs(out[0] - out[1]).max() <= 2
    # Mean 160 per channel, short of what clipping at 255 takes off a bright outlier.
    np.testing.assert_allclose(out[0].mean(axis=(0, 1)), 160, atol=4)


def test_white_balance_takes_out_the_lamp_and_keeps_the_stain_saturation():
    image = cell_at((20, 15), radius=8).astype(np.float32)
    lamp = np.clip(image + [30, 10, -20], 0, 255).round()  # a warmer lamp: each channel shifted
    out = normalize_stain(np.stack([image, lamp]).astype(np.uint8), "white_balance").numpy().astype(int)
    assert np.abs(out[0] - out[1]).max() <= 2
    np.testing.assert_allclose(out[0].mean(axis=(0, 1)), 160, atol=4)
    # A faint channel stays faint: its spread relative to the others is the image's own,
    # where channels stretches every channel to one spread.
    faint = np.full((40, 60, 3), 200, np.uint8)
    faint[cell_at((20, 15), radius=8)[..., 0] == 110] = (100, 100, 170)  # blue 30 below the field, red and green 100
    spread = normalize_stain(faint[None], "white_balance").numpy()[0].std(axis=(0, 1))
    stretched = normalize_stain(faint[None]).numpy()[0].std(axis=(0, 1))
    assert spread[2] < 0.4 * spread[0] and stretched[2] > 0.9 * stretched[0]


def test_reinhard_moves_each_image_to_the_reference_statistics():
    image = cell_at((20, 15), radius=8).astype(np.float32)
    dimmer = (0.7 * image).round()  # a dimmer lamp: every cone response scaled alike, l shifted in log
    out = normalize_stain(np.stack([image, dimmer]).astype(np.uint8), "reinhard").numpy()
    assert out.shape == (2, 40, 60, 3) and out.dtype == np.uint8
    assert np.abs(out[0].astype(int) - out[1]).max() <= 3
    # Both land on the reference's mean in l-alpha-beta (rounding to uint8 aside).
    rgb = np.maximum(out.astype(np.float64), 1.0) / 255.0
    lab = np.log10(rgb @ RGB_TO_LMS.T) @ LOG_LMS_TO_LAB.T
    np.testing.assert_allclose(lab.mean(axis=(1, 2)), np.stack([REINHARD_MEAN] * 2), atol=0.01)


def test_preprocess_normalises_the_crop():
    data = DataConfig(
        name="blood_cell_images", image_size=[120, 160], stain_normalize="grey", cell_crop={"fit": "extent", "size": 32}
    )
    images = np.stack([cell_at((50, 60), radius=12, size=(120, 160))] * 2)
    out = make_preprocess(data)(images).numpy()
    expected = normalize_stain(crop_to_cell_extent(images, data.color, data.cell_crop), "grey").numpy()
    np.testing.assert_array_equal(out, expected)
    assert (out[..., 0] == out[..., 2]).all()  # grey: one plane, three times


def test_extent_aspect_undoes_a_stretch():
    # A round cell in a square capture, served at 120x160: 4/3 times wider than high.
    yy, xx = np.mgrid[:120, :160]
    image = np.empty((120, 160, 3), np.uint8)
    image[:] = (225, 180, 185)
    image[((yy - 60) / 15) ** 2 + ((xx - 80) / 20) ** 2 <= 1] = PURPLE
    crop = CellCropConfig(fit="extent", size=48, extent_aspect=True)
    out = crop_to_cell_extent(image[None], COLOR, crop).numpy()[0]
    inside = out[..., 0] < (PURPLE[0] + 225) / 2
    rows, cols = inside.any(axis=1).sum(), inside.any(axis=0).sum()
    assert abs(rows - cols) <= 1  # round again
    square = crop_to_cell_extent(image[None], COLOR, crop.model_copy(update={"extent_aspect": False})).numpy()[0]
    inside = square[..., 0] < (PURPLE[0] + 225) / 2
    assert inside.any(axis=0).sum() - inside.any(axis=1).sum() >= 6  # without: still wide


def test_extent_max_zooms_a_tight_crop_out_onto_its_border_colour():
    # A capture cropped tight around a large cell: a radius-42 disc in a 120x160 frame.
    images = cell_at((60, 80), radius=42, size=(120, 160))[None]
    # A smoothing window as wide as the frame, so that the large disc has one peak, its centre.
    crop = CellCropConfig(fit="extent", extent_scale=2.0, size=48, window=1.0)
    capped = crop_to_cell_extent(images, COLOR, crop).numpy()
    # Side 2 sqrt(pi) 42 = 149 px is capped at the shorter side (120): the cell overfills it.
    assert disc_share(capped)[0] > 0.35
    wide = crop.model_copy(update={"extent_max": 2.0, "extent_fill": "border"})
    out = crop_to_cell_extent(images, COLOR, wide).numpy()
    # Within 2x the shorter side, the window takes its 149 px: the disc is back to a quarter.
    np.testing.assert_allclose(disc_share(out), 0.25, atol=0.03)
    # Past the image's edge, the border's own colour, not data.color.background (black).
    border = np.concatenate([images[0, 0], images[0, -1], images[0, :, 0], images[0, :, -1]]).mean(axis=0)
    np.testing.assert_allclose(out[0, 0, 0], border, atol=1)
    black = crop_to_cell_extent(images, COLOR, wide.model_copy(update={"extent_fill": "background"})).numpy()
    assert tuple(black[0, 0, 0]) == (0, 0, 0)


def test_extent_fill_field_paints_black_padding_with_the_field():
    """A capture rotated on a black canvas (black corners), as the Kaggle set's augmented
    copies are: with ``field``, black is neither the fill past the edge nor in the window."""
    # A cell near a black corner: its window reaches into the corner and past the top edge.
    images = cell_at((32, 50), radius=20, size=(120, 160))[None].copy()
    field_colour = images[0, 5, 100].astype(float)
    images[0, :30, :30] = 0  # a black corner
    images[0, -20:, :] = (3, 0, 5)  # a black band, JPEG-dark
    crop = CellCropConfig(fit="extent", extent_scale=2.0, size=32, window=1.0, extent_max=2.0)
    field = crop_to_cell_extent(images, COLOR, crop.model_copy(update={"extent_fill": "field"})).numpy()
    border = crop_to_cell_extent(images, COLOR, crop.model_copy(update={"extent_fill": "border"})).numpy()
    assert (field.max(axis=-1) >= 25).all()  # no black pixel left
    np.testing.assert_allclose(field[0, 0, 0], field_colour, atol=1)
    assert (border.max(axis=-1) < 25).any()  # border: the padding comes through, and darkens the fill
    assert np.abs(border[0, 0, 0].astype(float) - field_colour).max() > 20
    # No padding: field is border.
    plain = cell_at((60, 80), radius=20, size=(120, 160))[None]
    np.testing.assert_array_equal(
        crop_to_cell_extent(plain, COLOR, crop.model_copy(update={"extent_fill": "field"})).numpy(),
        crop_to_cell_extent(plain, COLOR, crop.model_copy(update={"extent_fill": "border"})).numpy(),
    )
