"""The model builders (keras_blood.models): every config class built, the paper's sizes, VGG16,
ResNet, test-time augmentation and ensembles."""

import re

import keras
import numpy as np
import pytest

from keras_blood.config.schema import MODEL_CLASSES, Config
from keras_blood.errors import ConfigError
from keras_blood.models.registry import BUILDERS, automatic_name, build_model


def model_config(**model):
    return Config.model_validate({"name": "t", "model": model}).model


def test_every_config_class_has_a_builder():
    assert set(BUILDERS) == set(MODEL_CLASSES)


@pytest.mark.parametrize(
    "name", ["cnn", "fnn", "basic", "dropout01", "dropout03", "dropout01x3", "lasso", "ridge", "ridge_dropout01"]
)
@pytest.mark.parametrize("shape, classes", [((28, 28, 3), 8), ((64, 48, 3), 4)])
def test_builders_map_pixels_to_probabilities(name, shape, classes):
    model = build_model(model_config(name=name), shape, classes)
    x = np.random.default_rng(0).integers(0, 256, (3, *shape)).astype("float32")
    probs = keras.ops.convert_to_numpy(model(x, training=False))
    assert probs.shape == (3, classes)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


def _expected_georgetown_params(filters=(16, 32, 32), dense=40, classes=8, size=28):
    total, channels = 0, 3
    for f in filters:
        total += 9 * channels * f + f
        channels, size = f, size // 2
    flat = size * size * channels
    return total + flat * dense + dense + dense * classes + classes


def test_georgetown_basic_has_about_27k_parameters():
    model = build_model(model_config(name="basic"), (28, 28, 3), 8)
    assert model.count_params() == _expected_georgetown_params() == 26_224


def test_paper_cnn_is_two_conv_layers_and_fnn_one_hidden_layer():
    cnn = build_model(model_config(name="cnn"), (28, 28, 3), 8)
    fnn = build_model(model_config(name="fnn", hidden_units=64), (28, 28, 3), 8)
    assert sum(isinstance(layer, keras.layers.Conv2D) for layer in cnn.layers) == 2
    assert sum(isinstance(layer, keras.layers.Dropout) for layer in cnn.layers) == 3
    assert fnn.count_params() == 28 * 28 * 3 * 64 + 64 + 64 * 8 + 8


@pytest.mark.parametrize(
    "name, dropout_rates, l1, l2",
    [
        ("basic", [], 0, 0),
        ("dropout01", [0.1], 0, 0),
        ("dropout03", [0.3], 0, 0),
        ("dropout01x3", [0.1, 0.1, 0.1], 0, 0),
        ("lasso", [], 1e-4, 0),
        ("ridge", [], 0, 1e-3),
        ("ridge_dropout01", [0.1], 0, 1e-3),
    ],
)
def test_georgetown_presets_differ_only_in_regularisation(name, dropout_rates, l1, l2):
    model = build_model(model_config(name=name), (28, 28, 3), 8)
    assert [layer.rate for layer in model.layers if isinstance(layer, keras.layers.Dropout)] == dropout_rates
    regularised = [layer for layer in model.layers if getattr(layer, "kernel_regularizer", None) is not None]
    if l1 or l2:
        assert len(regularised) == 4  # 3 conv + the hidden dense
        cfg = regularised[0].kernel_regularizer.get_config()
        assert cfg["l1"] == pytest.approx(l1) and cfg["l2"] == pytest.approx(l2)
        assert model.losses  # the penalty reaches the training loss
    else:
        assert not regularised
    assert model.count_params() == 26_224


def test_vgg16_resizes_small_inputs_and_freezes_its_base():
    model = build_model(model_config(name="vgg16", weights="none", dense_units=16), (28, 28, 3), 8)
    base = model.get_layer("vgg16")
    assert base.input_shape[1:3] == (32, 32) and not base.trainable
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert trainable == 512 * 16 + 16 + 16 * 8 + 8
    probs = model(np.full((2, 28, 28, 3), 128, "float32"))
    assert probs.shape == (2, 8)


def test_vgg16_preprocessing_matches_keras_applications():
    from keras_blood.models.vgg16 import VGG16Preprocess

    x = np.random.default_rng(1).uniform(0, 255, (2, 5, 5, 3)).astype("float32")
    expected = keras.applications.vgg16.preprocess_input(x.copy())
    np.testing.assert_allclose(keras.ops.convert_to_numpy(VGG16Preprocess()(x)), expected, rtol=1e-5)


def test_vgg16_fine_tune_from_a_named_block():
    model = build_model(model_config(name="vgg16", weights="none", fine_tune_from="block5_conv1"), (32, 32, 3), 4)
    base = model.get_layer("vgg16")
    trainable = [layer.name for layer in base.layers if layer.trainable and layer.weights]
    assert trainable == ["block5_conv1", "block5_conv2", "block5_conv3"]


@pytest.mark.parametrize(
    "params, message",
    [({"fine_tune_from": "block9"}, "block5_conv1"), ({"weights": "/no/such.h5"}, "no such file")],
)
def test_vgg16_bad_parameters_are_config_errors(params, message):
    with pytest.raises(ConfigError, match=message):
        build_model(model_config(name="vgg16", **{"weights": "none", **params}), (32, 32, 3), 4)


@pytest.mark.parametrize("residual, blocks", [(True, 1), (False, 1), (True, 2)])
def test_resnet_keeps_full_resolution_in_its_first_stage(residual, blocks):
    model = build_model(
        model_config(name="resnet", widths=[8, 16], blocks_per_stage=blocks, residual=residual), (28, 28, 3), 8
    )
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D) and layer.kernel_size == (3, 3)]
    assert len(convs) == 1 + 2 * 2 * blocks
    assert convs[1].output.shape[1:3] == (28, 28)
    assert any(isinstance(layer, keras.layers.Add) for layer in model.layers) == residual
    assert model(np.zeros((2, 28, 28, 3), "float32")).shape == (2, 8)


def test_resnet_upsample_runs_every_stage_at_that_factor():
    plain = build_model(model_config(name="resnet", widths=[4, 8]), (28, 28, 3), 8)
    model = build_model(model_config(name="resnet", widths=[4, 8], upsample=2), (28, 28, 3), 8)
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D) and layer.kernel_size == (3, 3)]
    assert [c.output.shape[1] for c in convs] == [56, 56, 56, 28, 28]
    assert model.count_params() == plain.count_params()  # same weights, finer maps
    assert model(np.zeros((2, 28, 28, 3), "float32")).shape == (2, 8)


@pytest.mark.parametrize("value", [0, 9])
def test_resnet_upsample_out_of_range_names_the_key(value):
    from pydantic import ValidationError

    with pytest.raises((ConfigError, ValidationError), match="upsample"):
        model_config(name="resnet", upsample=value)


@pytest.mark.parametrize("mode, views", [("flip", 2), ("d4", 8)])
def test_tta_averages_over_views_and_is_invariant_to_them(mode, views):
    from keras_blood.models.tta import with_tta

    keras.utils.set_random_seed(0)
    base = build_model(model_config(name="resnet", widths=[4], dropout=0.0), (8, 8, 3), 3)
    tta = with_tta(base, mode)
    x = np.random.default_rng(0).uniform(0, 255, (2, 8, 8, 3)).astype("float32")
    expected = np.mean([keras.ops.convert_to_numpy(base(v)) for v in _views(x, mode)], axis=0)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(tta(x)), expected, rtol=1e-5, atol=1e-6)
    flipped = np.flip(x, axis=2).copy()
    np.testing.assert_allclose(keras.ops.convert_to_numpy(tta(flipped)), expected, rtol=1e-5, atol=1e-6)
    assert with_tta(base, "none") is base


def _views(x, mode):
    if mode == "flip":
        return [x, np.flip(x, axis=2).copy()]
    rotations = [np.rot90(x, k, axes=(1, 2)).copy() for k in range(4)]
    return rotations + [np.flip(r, axis=2).copy() for r in rotations]


def test_an_ensemble_averages_its_members_probabilities():
    from keras_blood.models.ensemble import average_models
    from keras_blood.models.tta import with_tta

    keras.utils.set_random_seed(0)
    members = []
    for number in (1, 2, 3):
        member = build_model(model_config(name="resnet", widths=[4], dropout=0.0), (8, 8, 3), 3)
        member.name = f"resnet_{number}"
        members.append(member)
    x = np.random.default_rng(0).uniform(0, 255, (4, 8, 8, 3)).astype("float32")
    alone = [keras.ops.convert_to_numpy(m(x)) for m in members]
    assert not np.allclose(alone[0], alone[1])  # different initial weights, or the test proves nothing
    ensemble = average_models(members)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(ensemble(x)), np.mean(alone, axis=0), rtol=1e-5, atol=1e-6)
    assert ensemble.count_params() == 3 * members[0].count_params()
    assert average_models(members[:1]) is members[0]
    # Test-time augmentation wraps the ensemble: every view goes through every member.
    tta = with_tta(ensemble, "flip")
    expected = np.mean(
        [np.mean([keras.ops.convert_to_numpy(m(v)) for m in members], axis=0) for v in _views(x, "flip")], axis=0
    )
    np.testing.assert_allclose(keras.ops.convert_to_numpy(tta(x)), expected, rtol=1e-5, atol=1e-6)


def test_d4_tta_needs_square_inputs():
    from keras_blood.models.tta import with_tta

    base = build_model(model_config(name="resnet", widths=[4]), (8, 6, 3), 3)
    with pytest.raises(ConfigError, match="square"):
        with_tta(base, "d4")


def test_vgg16_imagenet_download_failure_is_a_clear_error(monkeypatch):
    def offline(*args, **kwargs):
        raise Exception("URL fetch failure on https://storage.googleapis.com/...: no route")

    monkeypatch.setattr(keras.applications, "VGG16", offline)
    with pytest.raises(ConfigError, match="model.weights=none"):
        build_model(model_config(name="vgg16"), (32, 32, 3), 4)


@pytest.mark.parametrize("norm, groups", [("group", {4, 8}), ("layer", {1})])
def test_resnet_group_and_layer_norm_use_each_images_own_statistics(norm, groups):
    model = build_model(model_config(name="resnet", widths=[4, 16], norm=norm, dropout=0.0), (16, 16, 3), 3)
    kinds = {type(layer) for layer in model.layers}
    assert keras.layers.BatchNormalization not in kinds and keras.layers.GroupNormalization in kinds
    assert {layer.groups for layer in model.layers if isinstance(layer, keras.layers.GroupNormalization)} == groups
    # No state from other images: an image's output is the same alone and in any batch.
    rng = np.random.default_rng(0)
    batch = rng.uniform(0, 255, (4, 16, 16, 3)).astype("float32")
    alone = model(batch[:1], training=True).numpy()
    np.testing.assert_allclose(model(batch, training=True).numpy()[:1], alone, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "layer_class, expected",
    [
        (keras.layers.Conv2D, "conv2d"),
        (keras.layers.BatchNormalization, "batch_normalization"),
        (keras.layers.GlobalAveragePooling2D, "global_average_pooling2d"),
        (keras.layers.MaxPooling2D, "max_pooling2d"),
        (keras.layers.ReLU, "re_lu"),
        (keras.layers.Dense, "dense"),
    ],
)
def test_automatic_names_are_the_ones_keras_gives(layer_class, expected):
    """named_layers recognises Keras's automatic names by this rule: it must stay Keras's."""
    assert automatic_name(layer_class.__name__) == expected
    made = {
        keras.layers.Conv2D: lambda: keras.layers.Conv2D(1, 1),
        keras.layers.Dense: lambda: keras.layers.Dense(1),
    }.get(layer_class, layer_class)()
    assert re.fullmatch(rf"{expected}(_\d+)?", made.name), made.name
