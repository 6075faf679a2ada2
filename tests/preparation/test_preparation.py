"""Raw image -> model input: decoding every format, and the MedMNIST crop + resize recipe."""

import numpy as np
import pytest
from PIL import Image

from keras_blood.errors import ExportError
from keras_blood.preparation.decode import Preparation, decode_file, prepare, preparer
from tests.helpers import capture_from, encode

BLOODMNIST = Preparation.from_json(
    {"input_size": [28, 28], "center_crop_fraction": 200 / 360, "resize": [28, 28], "method": "bicubic"}
)


def _smooth(shape, seed=0):
    """A smooth random RGB image (cell-like blobs rather than pixel noise)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (shape[0] // 20 + 2, shape[1] // 20 + 2, 3)).astype(np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((shape[1], shape[0]), Image.BICUBIC))


def test_recipe_matches_medmnist_as_pil_computes_it():
    # MedMNIST made BloodMNIST with PIL: centre crop 200x200 of the 360x363 capture, bicubic
    # resize. Our TensorFlow version must give (nearly) the same 28x28 arrays.
    for seed in range(3):
        capture = _smooth((360, 363), seed)
        known = np.asarray(Image.fromarray(capture[80:280, 81:281]).resize((28, 28), Image.BICUBIC))
        ours = prepare(capture, BLOODMNIST).numpy()
        assert ours.shape == (28, 28, 3) and ours.dtype == np.uint8
        difference = np.abs(ours.astype(int) - known)
        assert difference.mean() < 0.5 and difference.max() <= 3, (difference.mean(), difference.max())


def test_captures_made_from_real_bloodmnist_arrays_give_them_back(bloodmnist_root):
    arrays = np.load(bloodmnist_root / "bloodmnist.npz")["test_images"][:16]
    for i, small in enumerate(arrays):
        capture = capture_from(small, seed=i)
        ours = prepare(capture, BLOODMNIST).numpy().astype(int)
        # Upsampling then downsampling blurs a little; pulling in the noisy border would not.
        assert np.abs(ours - small).mean() < 3.0
        without_crop = prepare(capture, Preparation((28, 28), 1.0, "bicubic")).numpy().astype(int)
        assert np.abs(without_crop - small).mean() > 10.0


@pytest.mark.parametrize("shape", [(1, 1), (7, 1000), (1000, 7), (240, 320), (361, 363), (2000, 1500)])
def test_any_size_becomes_the_model_input(shape):
    image = np.random.default_rng(0).integers(0, 256, (*shape, 3)).astype(np.uint8)
    out = preparer(BLOODMNIST)(image).numpy()
    assert out.shape == (28, 28, 3) and out.dtype == np.uint8


def test_crop_is_a_centred_square_of_the_shorter_side():
    image = np.zeros((90, 120, 3), np.uint8)
    image[30:60, 45:75] = 255  # the centre third of the shorter side, as a square
    third = Preparation((30, 30), 1 / 3, "nearest")
    np.testing.assert_array_equal(prepare(image, third).numpy(), np.full((30, 30, 3), 255, np.uint8))


def test_same_size_without_crop_is_the_identity():
    image = np.random.default_rng(1).integers(0, 256, (28, 28, 3)).astype(np.uint8)
    for method in ("bicubic", "bilinear", "area"):
        np.testing.assert_array_equal(prepare(image, Preparation((28, 28), 1.0, method)).numpy(), image)


def test_recipe_from_json_defaults_and_errors():
    assert Preparation.from_json({"input_size": [64, 48]}) == Preparation((64, 48), 1.0, "bilinear")
    for bad, message in [
        ({}, "input_size"),
        ({"input_size": [28, 28], "center_crop_fraction": 0}, "center_crop_fraction"),
        ({"input_size": [28, 28], "method": "cubic"}, "'cubic'"),
    ]:
        with pytest.raises(ExportError, match=message):
            Preparation.from_json(bad)


@pytest.mark.parametrize("fmt", ["PNG", "BMP", "TIFF"])
def test_lossless_formats_decode_to_the_same_pixels(fmt):
    image = np.random.default_rng(2).integers(0, 256, (37, 53, 3)).astype(np.uint8)
    np.testing.assert_array_equal(decode_file(encode(image, fmt)).numpy(), image)


def test_16_bit_images_are_scaled_to_8_bits():
    grey = np.random.default_rng(4).integers(0, 256, (20, 30)).astype(np.uint16)
    for fmt in ("PNG", "TIFF"):
        decoded = decode_file(encode(grey * 257, fmt)).numpy()
        np.testing.assert_array_equal(decoded, np.repeat(grey[..., None], 3, axis=2).astype(np.uint8))


def test_jpeg_gif_greyscale_and_rgba_become_rgb():
    image = _smooth((40, 60))
    grey = image[..., 0]
    assert np.abs(decode_file(encode(image, "JPEG")).numpy().astype(int) - image).mean() < 3
    assert decode_file(encode(image, "GIF")).numpy().shape == (40, 60, 3)
    for fmt in ("PNG", "TIFF"):
        decoded = decode_file(encode(grey, fmt)).numpy()
        np.testing.assert_array_equal(decoded, np.repeat(grey[..., None], 3, axis=2))
    # Alpha is dropped, not composited; OpenCV's TIFF decoder premultiplies, so +-1 there.
    rgba = np.dstack([image, np.full((40, 60), 128, np.uint8)])
    np.testing.assert_array_equal(decode_file(encode(rgba, "PNG")).numpy(), image)
    assert np.abs(decode_file(encode(rgba, "TIFF")).numpy().astype(int) - image).max() <= 1


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda b: b"", "not an image file"),
        (lambda b: b"just some text\n", "not an image file"),
        (lambda b: encode(b, "JPEG")[:1500], "corrupt or truncated"),
        (lambda b: encode(b, "PNG")[:1500], "corrupt or truncated"),
        (lambda b: encode(b, "TIFF")[:1500], "corrupt or truncated TIFF"),
    ],
    ids=["empty", "text", "truncated-jpeg", "truncated-png", "truncated-tiff"],
)
def test_unreadable_bytes_raise_a_short_value_error(make, message):
    image = np.random.default_rng(3).integers(0, 256, (64, 64, 3)).astype(np.uint8)
    with pytest.raises(ValueError, match=message) as info:
        decode_file(make(image))
    assert "\n" not in str(info.value) and "{{" not in str(info.value)
