"""Training-time augmentations (keras_blood.data.augment), each on tiny synthetic images."""

import numpy as np
import pytest
import tensorflow as tf

from keras_blood.config.schema import AugmentConfig
from keras_blood.data.augment import (
    color_jitter,
    make_augment,
    mixup,
    random_background_tint,
    random_flips,
    random_jpeg,
    random_noise,
    random_rot90,
    random_scale,
    random_sharpen,
    random_stain,
)


def _batch(n=64, h=6, w=6, seed=0):
    rng = np.random.default_rng(seed)
    return tf.constant(rng.uniform(0, 255, (n, h, w, 3)).astype("float32"))


def _d4(image):
    rotations = [np.rot90(image, k) for k in range(4)]
    return rotations + [np.fliplr(r) for r in rotations]


def test_nothing_enabled_means_no_map():
    assert make_augment(AugmentConfig()) is None


@pytest.mark.parametrize("fn", [random_flips, random_rot90])
def test_geometric_augmentations_only_reorient_each_image(fn):
    tf.random.set_seed(0)
    images = _batch()
    out = fn(images).numpy()
    changed = 0
    for before, after in zip(images.numpy(), out):
        assert any(np.array_equal(after, view) for view in _d4(before))
        changed += not np.array_equal(before, after)
    assert 20 < changed < 64  # random per image, not all or nothing


def test_rot90_on_non_square_images_keeps_the_shape():
    tf.random.set_seed(1)
    images = _batch(h=4, w=6)
    out = random_rot90(images).numpy()
    for before, after in zip(images.numpy(), out):
        assert np.array_equal(after, before) or np.array_equal(after, np.rot90(before, 2))


def test_color_jitter_stays_in_range_and_is_mild():
    tf.random.set_seed(2)
    images = _batch()
    out = color_jitter(images, AugmentConfig(brightness=0.05, contrast=0.1, saturation=0.1)).numpy()
    assert out.min() >= 0 and out.max() <= 255
    assert 0 < np.abs(out - images.numpy()).mean() < 30


def test_mixup_blends_images_and_labels_alike():
    tf.random.set_seed(3)
    images = tf.constant(
        np.repeat(np.arange(8, dtype="float32")[:, None, None, None], 2, axis=1) * np.ones((8, 2, 2, 3), "float32")
    )
    labels = tf.one_hot(tf.range(8), 8)
    mixed, soft = mixup(images, labels, alpha=0.4)
    soft = soft.numpy()
    np.testing.assert_allclose(soft.sum(1), 1.0, rtol=1e-6)
    # Each image is the same blend of its two sources as its label.
    np.testing.assert_allclose(mixed.numpy()[:, 0, 0, 0], soft @ np.arange(8), rtol=1e-5)


def test_hue_turns_colours_and_leaves_greys_and_brightness():
    tf.random.set_seed(0)
    blue = tf.constant(np.tile([60.0, 60.0, 200.0], (200, 4, 4, 1)), tf.float32)
    turned = color_jitter(blue, AugmentConfig(hue=0.1)).numpy()[:, 0, 0]
    np.testing.assert_allclose(turned.max(axis=1), 200.0, rtol=1e-4)  # value kept
    np.testing.assert_allclose(turned.min(axis=1), 60.0, rtol=1e-4)  # saturation kept
    hues = tf.image.rgb_to_hsv(turned / 255.0).numpy()[:, 0]
    turns = (hues - 2 / 3 + 0.5) % 1.0 - 0.5
    assert np.abs(turns).max() <= 0.1 + 1e-4 and turns.min() < -0.05 and turns.max() > 0.05
    grey = tf.fill([8, 4, 4, 3], 120.0)
    np.testing.assert_allclose(color_jitter(grey, AugmentConfig(hue=0.5)).numpy(), 120.0, rtol=1e-5)
    assert make_augment(AugmentConfig(hue=0.1)) is not None


def test_channel_gain_tints_and_grayscale_greys_some_images():
    tf.random.set_seed(0)
    images = tf.fill([200, 4, 4, 3], 100.0)
    tinted = color_jitter(images, AugmentConfig(channel_gain=0.3)).numpy()
    ratios = tinted[:, 0, 0] / 100.0  # each channel's own factor, the same over the image
    assert (tinted == tinted[:, :1, :1]).all() and ratios.min() >= 0.7 and ratios.max() <= 1.3
    assert np.abs(ratios[:, 0] - ratios[:, 1]).max() > 0.2  # channels move apart: a tint
    colour = tf.constant(np.tile([200.0, 50.0, 100.0], (200, 4, 4, 1)), tf.float32)
    out = color_jitter(colour, AugmentConfig(grayscale=0.5)).numpy()
    grey = (out[..., 0] == out[..., 2]).all(axis=(1, 2))
    assert 0.35 < grey.mean() < 0.65  # about half turned grey (luma 124.2), the rest unchanged
    np.testing.assert_allclose(out[grey][..., 0], 0.299 * 200 + 0.587 * 50 + 0.114 * 100, rtol=1e-5)
    np.testing.assert_array_equal(out[~grey], colour.numpy()[~grey])


def test_sharpen_adds_detail_and_leaves_flat_images_alone():
    tf.random.set_seed(0)
    flat = tf.fill([8, 8, 8, 3], 120.0)
    np.testing.assert_allclose(random_sharpen(flat, 2.0).numpy(), 120.0, atol=1e-3)
    edge = np.full((8, 8, 8, 3), 100.0, np.float32)
    edge[:, :, 4:] = 150.0
    out = random_sharpen(tf.constant(edge), 2.0).numpy()
    assert out.min() >= 0 and out.max() <= 255
    assert (out[:, :, 3].mean(axis=(1, 2)) <= 100).all() and out[:, :, 3].min() < 95  # overshoot at the edge


def test_blur_softens_an_edge_and_never_sharpens_it():
    tf.random.set_seed(0)
    edge = np.full((16, 8, 8, 3), 100.0, np.float32)
    edge[:, :, 4:] = 150.0
    out = random_sharpen(tf.constant(edge), 0.0, blur=1.0).numpy()
    step = out[:, :, 4].mean(axis=(1, 2)) - out[:, :, 3].mean(axis=(1, 2))  # 50 before
    assert (step <= 50 + 1e-3).all() and step.min() < 40  # softened, by a random amount
    assert out[:, :, 3].min() >= 100 - 1e-3  # no overshoot


def test_scale_zooms_about_the_centre_and_fills_with_the_border_colour():
    tf.random.set_seed(0)
    images = np.full((32, 21, 21, 3), 200.0, np.float32)
    images[:, 8:13, 8:13] = (90.0, 40.0, 140.0)  # a cell in the middle
    out = random_scale(tf.constant(images), 0.4).numpy()
    assert out.shape == images.shape and out.min() >= 0
    np.testing.assert_allclose(out[:, 10, 10], np.tile([90.0, 40.0, 140.0], (32, 1)), atol=1e-3)  # the centre stays
    cell = (out[..., 0] < 145).sum(axis=(1, 2))  # the cell's area, 25 pixels before
    assert cell.min() < 22 and cell.max() > 28  # both smaller and larger
    np.testing.assert_allclose(out[:, 0, 0], 200.0, atol=1e-3)  # corners: the background, also past the edge
    np.testing.assert_array_equal(random_scale(tf.constant(images), 0.0).numpy().round(3), images)


def test_stain_jitter_moves_stain_amounts_and_is_exact_when_off():
    rng = np.random.default_rng(0)
    images = tf.constant(rng.integers(1, 256, (8, 6, 6, 3)).astype("float32"))
    np.testing.assert_allclose(random_stain(images, 0.0), images, atol=1e-3)
    jittered = random_stain(images, 0.3).numpy()
    assert jittered.shape == images.shape and 0.0 <= jittered.min() and jittered.max() <= 255.0
    change = np.abs(jittered - images.numpy()).mean(axis=(1, 2, 3))
    assert (change > 1.0).all() and np.ptp(change) > 0.5  # every image moved, each by its own draw
    # A purple (haematoxylin-rich) pixel keeps its hue family: more blue than green.
    purple = tf.constant(np.tile([[[[120.0, 60.0, 160.0]]]], (64, 1, 1, 1)), tf.float32)
    out = random_stain(purple, 0.2).numpy()[:, 0, 0]
    assert (out[:, 2] > out[:, 1]).all()
    assert make_augment(AugmentConfig(stain=0.1)) is not None


def test_background_tint_moves_the_background_and_leaves_the_cell():
    tf.random.set_seed(0)
    images = np.full((32, 21, 21, 3), 210.0, np.float32)
    images[:, 6:15, 6:15] = (90.0, 40.0, 140.0)  # a cell, darker than the image's mean
    out = random_background_tint(tf.constant(images), 0.2).numpy()
    assert out.shape == images.shape and out.min() >= 0 and out.max() <= 255
    np.testing.assert_allclose(out[:, 10, 10], images[:, 10, 10], atol=1e-3)  # the cell stays
    shift = out[:, 0, 0] - images[:, 0, 0]  # the background: one colour an image, each its own
    assert np.abs(shift).max() <= 0.2 * 255 + 1e-3 and np.abs(shift).mean() > 10
    np.testing.assert_allclose(out[:, 0, 0], out[:, 20, 20], atol=1e-3)
    assert np.ptp(shift[:, 0]) > 20 and np.ptp(shift[:, 0] - shift[:, 2]) > 20  # hues differ between images
    assert make_augment(AugmentConfig(background_tint=0.1)) is not None


def test_noise_is_zero_mean_and_each_image_draws_its_own_spread():
    tf.random.set_seed(0)
    images = tf.fill([64, 16, 16, 3], 128.0)
    out = random_noise(images, 0.1).numpy() - 128.0
    spreads = out.std(axis=(1, 2, 3))
    assert abs(out.mean()) < 0.5
    assert spreads.max() <= 0.1 * 255 * 1.15 and spreads.min() < 5 < spreads.max()


def test_jpeg_smears_fine_detail_at_each_images_own_quality():
    tf.random.set_seed(0)
    checks = np.where((np.indices((32, 32)).sum(0) % 2)[..., None], 220.0, 30.0) * np.ones(3, "float32")
    images = tf.constant(np.stack([checks] * 32))
    error = np.abs(random_jpeg(images, 10).numpy() - checks).mean(axis=(1, 2, 3))
    assert error.max() > 15 and error.max() - error.min() > 10  # low qualities smear, each image its own
    near_lossless = random_jpeg(images[:4], 95).numpy()  # quality 95 only
    assert near_lossless.shape == (4, 32, 32, 3) and near_lossless.dtype == np.float32
    assert np.abs(near_lossless - checks).mean() < 3


def test_cutmix_pastes_a_patch_and_mixes_labels_by_its_area():
    tf.random.set_seed(0)
    images = tf.constant(np.arange(8, dtype="float32")[:, None, None, None] * np.ones((8, 64, 64, 3), "float32"))
    labels = tf.one_hot(tf.range(8), 8)
    mixed, soft = make_augment(AugmentConfig(cutmix=1.0))(images, labels)
    mixed, soft = mixed.numpy(), soft.numpy()
    np.testing.assert_allclose(soft.sum(1), 1.0, rtol=1e-5)
    for i in range(8):
        kept = (mixed[i, ..., 0] == i).mean()  # the share of the image's own pixels
        # keras weighs by the box's area before it meets the pixel grid: a pixel's row or column off
        np.testing.assert_allclose(soft[i, i], kept, atol=4 / 64)
    assert (soft.max(1) < 1).any()
