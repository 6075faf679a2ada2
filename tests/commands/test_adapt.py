"""``python -m keras_blood.adapt``: a version's batch-normalisation statistics re-estimated on
a lab's unlabelled images (AdaBN), published as a new version that a server loads."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image


def tinted_lab(folder, images: np.ndarray, gain=(1.25, 0.8, 1.1)) -> list[np.ndarray]:
    """``images`` as another lab's captures would show them (another lamp and stain: each
    channel scaled), saved as PNG files in class-less subfolders."""
    tinted = [np.clip(image * np.array(gain), 0, 255).astype(np.uint8) for image in images]
    for i, image in enumerate(tinted):
        path = folder / f"slide{i % 3}" / f"cell_{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(path)
    return tinted


def test_the_moving_statistics_become_the_mean_over_the_batches_and_nothing_else_changes():
    import keras

    inputs = keras.Input((4, 4, 3))
    x = keras.layers.Conv2D(2, 1, use_bias=False)(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.Dropout(0.5)(keras.layers.Flatten()(x))
    model = keras.Model(inputs, keras.layers.Dense(3)(x))
    from keras_blood.training.adapt import adapt_batch_norm

    rng = np.random.default_rng(0)
    batches = [rng.normal(5.0, 2.0, (8, 4, 4, 3)).astype("float32") for _ in range(3)]
    kernel = model.layers[1].kernel.numpy().copy()
    assert adapt_batch_norm(model, batches) == 1
    bn = model.layers[2]
    features = [np.asarray(model.layers[1](batch)) for batch in batches]
    assert np.allclose(bn.moving_mean.numpy(), np.mean([f.mean(axis=(0, 1, 2)) for f in features], axis=0), atol=1e-4)
    assert np.allclose(
        bn.moving_variance.numpy(), np.mean([f.var(axis=(0, 1, 2)) for f in features], axis=0), rtol=1e-3
    )
    assert np.array_equal(model.layers[1].kernel.numpy(), kernel)
    assert bn.momentum == 0.99 and model.layers[4].rate == 0.5  # put back


@pytest.mark.slow
def test_adapt_publishes_a_version_fitted_to_a_labs_images_that_a_server_loads(
    synthetic, tmp_path, command, model_server
):
    from keras_blood.config.schema import ResNetConfig
    from keras_blood.training.trainer import train

    config = synthetic(train={"epochs": 2})
    config = config.model_copy(update={"model": ResNetConfig(name="resnet", widths=(8, 16), blocks_per_stage=1)})
    version = train(config).export_dir
    arrays = np.load(tmp_path / "data" / "bloodmnist.npz")
    lab = tmp_path / "lab"
    tinted = tinted_lab(lab, arrays["test_images"][:40])
    (lab / "notes.txt").write_text("not an image: not read")

    adapted = command("keras_blood.adapt", str(version), "--data", str(lab))
    assert adapted.returncode == 0, adapted.stderr[-3000:]
    new = tmp_path / "saved_models" / "tiny" / "2"
    assert adapted.stdout.strip().splitlines()[-1] == str(new)
    record = json.loads((new / "assets.extra" / "adaptation.json").read_text())
    assert record["adapted_from"] == str(version.resolve()) and record["data"] == [str(lab.resolve())]
    assert record["images"] == 40 and record["left_out"] == 0

    from keras_blood.serving.version import load_keras_model
    from keras_blood.training.adapt import batch_norm_layers

    before, after = (batch_norm_layers(load_keras_model(v)) for v in (version, new))
    assert f"Adapted {len(before)} batch-normalisation layers to 40 images of {lab}" in adapted.stdout
    assert all(not np.allclose(b.moving_mean.numpy(), a.moving_mean.numpy()) for b, a in zip(before, after))
    assert all(np.array_equal(b.gamma.numpy(), a.gamma.numpy()) for b, a in zip(before, after))
    # The first layer's statistics are those of the lab's images: the mean of its input.
    import keras

    from keras_blood.config.loading import load_config
    from keras_blood.config.paths import version_config_file
    from keras_blood.preparation.decode import Preparation
    from keras_blood.serving.request import expand_inputs
    from keras_blood.training.adapt import model_inputs

    # What the model took: the lab's files prepared as the version's serving graph prepares them.
    recipe = Preparation.from_json(json.loads((new / "assets.extra" / "preparation.json").read_text()))
    (inputs,), _ = model_inputs(expand_inputs([str(lab)]), load_config(version_config_file(new)), recipe, 64)
    network = load_keras_model(new)
    first = batch_norm_layers(network)[0]
    first_input = np.asarray(keras.Model(network.inputs, first.input)(inputs))
    assert np.allclose(first.moving_mean.numpy(), first_input.mean(axis=(0, 1, 2)), rtol=1e-3, atol=1e-4)
    served = model_server(new, np.stack(tinted))  # another process loads the SavedModel
    assert served.shape == (40, 8) and np.allclose(served.sum(axis=1), 1, atol=1e-4)


def test_adapt_refuses_in_one_line_a_version_without_batch_norm_and_too_few_images(synthetic, tmp_path, command):
    from keras_blood.training.trainer import train

    version = train(synthetic(train={"epochs": 1})).export_dir  # the fnn: no batch normalisation
    arrays = np.load(tmp_path / "data" / "bloodmnist.npz")
    tinted_lab(tmp_path / "lab", arrays["test_images"][:5])
    refused = command("keras_blood.adapt", str(version), "--data", str(tmp_path / "lab"))
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines()[-1].startswith(f"error: {version} has no batch-normalisation layers")
    missing = command("keras_blood.adapt", str(version), "--data", str(tmp_path / "nowhere"))
    assert missing.returncode == 2 and missing.stderr.strip().endswith("nowhere: no such file or folder")
