"""Calibration: ECE, Brier and NLL on hand-made arrays; temperature scaling fitted,
folded into the exported model and served."""

import json

import numpy as np
import pytest
import tensorflow as tf

from keras_blood.evaluation.calibration import fit_temperature, scaled_probabilities
from keras_blood.evaluation.metrics import calibration_metrics, expected_calibration_error
from keras_blood.models.temperature import TemperatureScaling
from keras_blood.preparation.decode import decode, prepare
from keras_blood.serving.version import load_version
from keras_blood.training import trainer as train_module


def test_ece_of_a_hand_computed_example():
    labels = np.array([0, 0, 1, 1, 0])
    probs = np.array([[0.95, 0.05], [0.95, 0.05], [0.95, 0.05], [0.4, 0.6], [0.55, 0.45]])
    # Bins (14/15, 1]: three at 0.95, two right -> |2/3 - 0.95|; (8/15, 9/15]: 0.6 (right)
    # and 0.55 (right) -> |1 - 0.575|. Weighted by 3/5 and 2/5.
    expected = 3 / 5 * abs(2 / 3 - 0.95) + 2 / 5 * abs(1 - 0.575)
    assert expected_calibration_error(labels, probs) == pytest.approx(expected)
    # Bins are closed on the right: a confidence on an edge shares no bin with one above it.
    edge = np.linspace(0, 1, 16)[9]
    probs = np.array([[edge, 1 - edge], [0.62, 0.38]])
    assert expected_calibration_error(np.array([0, 1]), probs) == pytest.approx((1 - edge + 0.62) / 2)


def toy(confidence_scale: float, n=20000, k=4, seed=0):
    """Labels drawn from softmax(logits): exactly calibrated; the probabilities reported
    are softmax(confidence_scale * logits), over-confident when the scale is above 1."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=2.0, size=(n, k))
    true = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    labels = np.array([rng.choice(k, p=p) for p in true])
    reported = np.exp(confidence_scale * logits)
    return labels, reported / reported.sum(1, keepdims=True)


def test_ece_is_near_zero_when_calibrated_and_large_when_overconfident():
    assert expected_calibration_error(*toy(1.0)) < 0.015
    assert expected_calibration_error(*toy(3.0)) > 0.1


def test_brier_and_nll_definitions():
    labels = np.array([0, 1, 2])
    probs = np.array([[0.7, 0.2, 0.1], [0.5, 0.5, 0.0], [0.0, 0.0, 1.0]])
    m = calibration_metrics(labels, probs)
    # Brier: squared distance to the one-hot label, summed over classes, mean over examples.
    assert m["brier"] == pytest.approx(((0.09 + 0.04 + 0.01) + (0.25 + 0.25) + 0.0) / 3)
    assert m["nll"] == pytest.approx(-(np.log(0.7) + np.log(0.5) + np.log(1.0)) / 3)


@pytest.mark.parametrize("scale, expected", [(3.0, 3.0), (0.5, 0.5), (1.0, 1.0)])
def test_fitted_temperature_undoes_over_and_under_confidence(scale, expected):
    labels, probs = toy(scale)
    temperature = fit_temperature(labels, probs)
    # Over-confident (scale 3) needs T > 1, under-confident (0.5) T < 1.
    assert temperature == pytest.approx(expected, rel=0.08)
    after = scaled_probabilities(probs, temperature)
    np.testing.assert_array_equal(after.argmax(1), probs.argmax(1))
    assert expected_calibration_error(labels, after) < 0.015


def test_the_layer_computes_what_numpy_does():
    _, probs = toy(2.0, n=64)
    probs[0] = [1.0, 0.0, 0.0, 0.0]  # a probability of 0 stays finite
    layer = TemperatureScaling(0.7)
    np.testing.assert_allclose(layer(probs.astype("float32")).numpy(), scaled_probabilities(probs, 0.7), atol=1e-6)
    assert TemperatureScaling.from_config(layer.get_config()).temperature == 0.7


@pytest.mark.slow
def test_training_fits_a_temperature_and_exports_calibrated_probabilities(synthetic):
    # Label smoothing makes the tiny model under-confident: its temperature is below 1.
    calibrated = {"calibration": "temperature", "tta": "flip"}
    config = synthetic(converged=True, train={"label_smoothing": 0.2}, eval=calibrated)
    result = train_module.train(config)
    metrics = result.metrics
    record = metrics["calibration"]
    temperature = record["temperature"]
    assert record["fitted_on"] == "val" and temperature < 1
    assert record["val"]["after"]["nll"] <= record["val"]["before"]["nll"]
    assert record["val"]["after"]["ece"] <= record["val"]["before"]["ece"]
    # Predictions do not change: the same accuracy on both splits.
    for split in ("val", "test"):
        assert record[split]["after"]["accuracy"] == record[split]["before"]["accuracy"]
    assert metrics["accuracy"] == record["test"]["before"]["accuracy"]
    assert metrics["ece"] == record["test"]["after"]["ece"]
    assert (result.run_dir / "reliability.png").is_file()
    assert json.loads((result.export_dir / "assets.extra" / "metrics.json").read_text()) == metrics

    # Both served signatures return softmax(log(p) / T) of the uncalibrated model's p.
    version = load_version(result.export_dir)
    uncalibrated = result.model.layers[1]  # [pixels, the model with TTA, TemperatureScaling]
    pixels = np.load(config.data.root / "bloodmnist.npz")["test_images"][:16]
    served = version.serve(pixels=tf.constant(pixels))["probabilities"].numpy()
    expected = scaled_probabilities(uncalibrated.predict(pixels.astype("float32"), verbose=0), temperature)
    np.testing.assert_allclose(served, expected, atol=1e-5)
    files = [tf.io.encode_png(image).numpy() for image in pixels]
    served = version.loaded.signatures["serving_bytes"](images=tf.constant(files))["probabilities"].numpy()
    prepared = np.stack([prepare(decode(data), version.preparation).numpy() for data in files])
    expected = scaled_probabilities(uncalibrated.predict(prepared.astype("float32"), verbose=0), temperature)
    np.testing.assert_allclose(served, expected, atol=1e-5)
