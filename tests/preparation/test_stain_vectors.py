"""Macenko stain normalisation (data.stain_normalize: macenko) on synthetic stained cells."""

import numpy as np
import pytest
import tensorflow as tf

from keras_blood.preparation.stain_vectors import (
    REFERENCE_STAINS,
    STAINED_OD,
    _main_plane,
    image_stains,
    normalize_macenko,
)
from keras_blood.preparation.steps import normalize_stain

SIZE = 32


def _amounts(seed: int) -> np.ndarray:
    """``[SIZE, SIZE, 2]`` amounts of two stains: a dense round nucleus (stain 1) in a
    cytoplasm and red cells (stain 2) on an unstained background."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:SIZE, :SIZE]
    amounts = np.zeros((SIZE, SIZE, 2), np.float32)
    cell = (y - 16) ** 2 + (x - 16) ** 2
    amounts[..., 0] = np.where(cell < 36, 1.6, 0.0)  # the nucleus
    amounts[..., 1] = np.where(cell < 100, 0.35, 0.0)  # the cytoplasm around it
    for cy, cx in ((4, 4), (27, 5), (5, 27)):  # three red cells
        amounts[..., 1] += np.where((y - cy) ** 2 + (x - cx) ** 2 < 12, 0.7, 0.0)
    return amounts + rng.uniform(0, 0.02, amounts.shape).astype(np.float32)


def _draw(amounts: np.ndarray, stains, lamp=(255.0, 255.0, 255.0)) -> np.ndarray:
    """Beer-Lambert: the uint8 image of ``amounts`` of the two ``stains`` (columns, R/G/B OD)
    under a lamp of that brightness per channel."""
    od = amounts @ np.asarray(stains, np.float32).T
    return np.clip(np.round(np.asarray(lamp) * np.exp(-od)), 0, 255).astype(np.uint8)


# One lab's nuclei blue and eosin pink; another's nuclei magenta and red cells green, under a
# dimmer, yellower lamp.
BLUE_PINK = ((0.75, 0.2), (0.65, 0.75), (0.12, 0.6))
MAGENTA_GREEN = ((0.35, 0.8), (0.9, 0.25), (0.25, 0.55))


def test_two_labs_stains_drawn_alike():
    amounts = _amounts(0)
    one = _draw(amounts, BLUE_PINK)
    other = _draw(amounts, MAGENTA_GREEN, lamp=(235.0, 225.0, 190.0))
    before = np.abs(one.astype(int) - other.astype(int)).mean()
    out = normalize_macenko(tf.constant(np.stack([one, other]))).numpy().astype(int)
    after = np.abs(out[0] - out[1]).mean()
    assert before > 30
    assert after < 6, (before, after)


def test_nucleus_drawn_in_reference_haematoxylin():
    amounts = _amounts(1)
    image = _draw(amounts, MAGENTA_GREEN)
    od = tf.constant(-np.log((image.reshape(1, -1, 3).astype(np.float32) + 1) / 256.0))
    stains, found = image_stains(od, stained=tf.reduce_sum(od, -1) >= STAINED_OD)
    assert bool(found[0])
    haematoxylin = np.asarray(MAGENTA_GREEN, np.float32)[:, 0]
    cosine = stains.numpy()[0, :, 0] @ (haematoxylin / np.linalg.norm(haematoxylin))
    assert cosine > 0.98
    out = normalize_macenko(tf.constant(image[None])).numpy()[0].astype(np.float32)
    nucleus_od = -np.log((out[16, 16] + 1) / 256.0)
    reference = np.asarray(REFERENCE_STAINS, np.float32)[:, 0]
    assert nucleus_od @ reference / (np.linalg.norm(nucleus_od) * np.linalg.norm(reference)) > 0.98


@pytest.mark.parametrize("fill", [255, 0, 128])
def test_plain_images_stay_finite_and_uint8(fill):
    """A blank, a black and a grey frame: too few stained pixels for stains of their own."""
    images = tf.fill([2, SIZE, SIZE, 3], tf.constant(fill, tf.uint8))
    out = normalize_macenko(images)
    assert out.dtype == tf.uint8 and out.shape == images.shape
    assert np.isfinite(out.numpy()).all()


def test_in_a_graph_with_any_batch_and_through_the_step():
    traced = tf.function(normalize_macenko, input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8)])
    images = np.stack([_draw(_amounts(seed), BLUE_PINK) for seed in range(3)])
    np.testing.assert_array_equal(traced(tf.constant(images)).numpy(), normalize_macenko(tf.constant(images)).numpy())
    np.testing.assert_array_equal(normalize_stain(tf.constant(images), "macenko").numpy(), traced(images).numpy())


def test_main_plane_spans_the_two_leading_eigenvectors():
    rng = np.random.default_rng(0)
    bases = np.linalg.qr(rng.normal(size=(8, 3, 3)))[0]
    values = np.stack([rng.uniform(0.5, 1.0, 8), rng.uniform(0.1, 0.4, 8), rng.uniform(0.0, 0.01, 8)], -1)
    covariance = np.einsum("nij,nj,nkj->nik", bases, values, bases).astype(np.float32)
    plane = _main_plane(tf.constant(covariance)).numpy()
    leading = np.linalg.eigh(covariance)[1][:, :, 1:]
    # The same plane: each leading eigenvector lies in it (its projection keeps its length).
    kept = np.linalg.norm(np.einsum("nck,ncj->nkj", plane, leading), axis=1)
    np.testing.assert_allclose(kept, 1.0, atol=1e-4)


def _edge_run(fmt: str, images: np.ndarray) -> np.ndarray:
    spec = [tf.TensorSpec([len(images), SIZE, SIZE, 3], tf.uint8, name="images")]
    traced = tf.function(normalize_macenko, input_signature=spec)
    if fmt == "litert":
        litert = pytest.importorskip("ai_edge_litert.interpreter", reason="LiteRT comes with the edge extra")
        converter = tf.lite.TFLiteConverter.from_concrete_functions([traced.get_concrete_function()], traced)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]  # no TF Select ops
        interpreter = litert.Interpreter(model_content=converter.convert())
        interpreter.allocate_tensors()
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], images)
        interpreter.invoke()
        return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    tf2onnx = pytest.importorskip("tf2onnx", reason="tf2onnx comes with the edge extra")
    runtime = pytest.importorskip("onnxruntime", reason="ONNX Runtime comes with the edge extra")
    proto, _ = tf2onnx.convert.from_function(traced, input_signature=spec, opset=17)
    session = runtime.InferenceSession(proto.SerializeToString())
    return session.run(None, {session.get_inputs()[0].name: images})[0]


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["litert", "onnx"])
def test_edge_formats_run_it(fmt):
    """A version with it converts for the edge (export_edge): LiteRT with builtin ops only."""
    images = np.stack([_draw(_amounts(seed), BLUE_PINK) for seed in range(2)])
    out = _edge_run(fmt, images)
    assert np.abs(out.astype(int) - normalize_macenko(tf.constant(images)).numpy().astype(int)).max() <= 1
