"""Grad-CAM explanations: every builder, TTA and ensembles, the command, and two checks
that can fail (maps on what the classes differ by; maps that change when the top of the
network is randomised, after Adebayo et al. 2018)."""

import csv
import json
import shutil

import keras
import numpy as np
import pytest

from keras_blood.config.loading import load_config
from keras_blood.config.schema import Config
from keras_blood.evaluation.evaluate_version import evaluate
from keras_blood.evaluation.gradcam import CamNetwork, Explainer, normalise
from keras_blood.evaluation.gradcam_checks import mask_share, randomized_top, rank_correlation
from keras_blood.explain import main
from keras_blood.models.ensemble import average_models
from keras_blood.models.registry import build_model
from keras_blood.models.temperature import with_temperature
from keras_blood.models.tta import with_tta
from keras_blood.preparation.color import color_mask
from keras_blood.serving.version import KERAS_MODEL
from keras_blood.training import task as task_module
from keras_blood.training import trainer as train_module
from tests.conftest import REPO, encode, marked_npz

# Measured (README, "Explanations (Grad-CAM)"): the mean rank correlation between the
# trained and the top-randomised maps is 0.0 to 0.2 on the models below; maps that ignored
# the learnt weights would stay near 1.
RANDOMISED_MAX_CORRELATION = 0.5


def round_trip(model, tmp_path):
    """``model`` as an export keeps it: saved as model.keras, loaded in safe mode."""
    model.save(tmp_path / KERAS_MODEL)
    return keras.saving.load_model(tmp_path / KERAS_MODEL, safe_mode=True, compile=False)


def model_config(**model):
    return Config.model_validate({"name": "t", "model": model})


PIXELS = np.random.default_rng(0).integers(0, 256, (3, 28, 28, 3)).astype(np.uint8)


@pytest.mark.parametrize(
    "model, layer_type",
    [
        ({"name": "cnn"}, keras.layers.Conv2D),
        ({"name": "fnn"}, keras.layers.Rescaling),  # no convolution: the map is at the pixels
        *[({"name": name}, keras.layers.Conv2D) for name in
          ("basic", "dropout01", "dropout03", "dropout01x3", "lasso", "ridge", "ridge_dropout01")],
        ({"name": "resnet", "widths": [8, 16]}, keras.layers.ReLU),
        ({"name": "vgg16", "weights": "none", "dense_units": 8}, keras.layers.Conv2D),  # inside the nested base
    ],
    ids=lambda v: v.get("name") if isinstance(v, dict) else "",
)  # fmt: skip
def test_every_builder_gets_maps_of_its_input_size(model, layer_type, tmp_path):
    keras.utils.set_random_seed(0)
    loaded = round_trip(build_model(model_config(**model).model, (28, 28, 3), 8), tmp_path)
    explainer = Explainer(loaded, model_config(**model).data, list("abcdefgh"))
    result = explainer.explain(PIXELS)

    (network,) = explainer.networks
    layers = {layer.name: layer for layer in loaded.layers}
    for layer in loaded.layers:
        layers.update({inner.name: inner for inner in getattr(layer, "layers", [])})
    assert isinstance(layers[network.layer], layer_type)
    assert explainer.explained == f"Grad-CAM of network {loaded.name} at layer {network.layer}"
    assert result.cams.shape == (3, 28, 28) and np.isfinite(result.cams).all()
    assert result.cams.min() >= 0 and np.allclose(result.cams.max(axis=(1, 2)), 1)
    assert (result.cams.std(axis=(1, 2)) > 0.01).all()  # not constant
    np.testing.assert_allclose(result.probs, loaded(PIXELS.astype("float32"), training=False), atol=1e-6)


def test_the_last_convolution_before_pooling_is_explained():
    keras.utils.set_random_seed(0)
    config = model_config(name="vgg16", weights="none")
    vgg = Explainer(build_model(config.model, (28, 28, 3), 8), config.data, [])
    assert vgg.networks[0].layer == "block5_conv3"  # 2x2 at 32x32; block5_pool would be 1x1


def test_tta_explains_the_base_network_and_an_ensemble_averages_its_members(tmp_path):
    keras.utils.set_random_seed(0)
    members = [build_model(model_config(name="cnn").model, (28, 28, 3), 8) for _ in range(2)]
    members[0].name, members[1].name = "cnn_1", "cnn_2"
    data = model_config(name="cnn").data
    x = PIXELS.astype("float32")

    tta = Explainer(round_trip(with_tta(members[0], "d4"), tmp_path), data, [])
    result = tta.explain(PIXELS)
    assert tta.explained.startswith("Grad-CAM of the base network cnn_1 at layer ")
    assert "without the d4 test-time views" in tta.explained
    np.testing.assert_allclose(result.probs, tta.model(x), atol=1e-6)  # the TTA model's prediction
    base = CamNetwork.of(members[0])
    np.testing.assert_allclose(result.cams, base(x, result.predictions), atol=1e-5)

    calibrated = Explainer(round_trip(with_temperature(with_tta(members[0], "d4"), 0.5), tmp_path), data, [])
    result = calibrated.explain(PIXELS)
    assert calibrated.explained == tta.explained  # the base network, through the temperature
    np.testing.assert_allclose(result.probs, calibrated.model(x), atol=1e-6)  # calibrated probabilities
    np.testing.assert_allclose(result.cams, base(x, result.predictions), atol=1e-5)

    ensemble = Explainer(round_trip(with_tta(average_models(members), "flip"), tmp_path), data, [])
    result = ensemble.explain(PIXELS)
    assert ensemble.explained.startswith("mean of the Grad-CAM maps of the 2 ensemble members (cnn_1 at layer")
    maps = [CamNetwork.of(member)(x, result.predictions) for member in members]
    np.testing.assert_allclose(result.cams, normalise(np.mean(maps, axis=0)), atol=1e-5)
    assert not np.allclose(maps[0], maps[1], atol=0.05)  # two networks, two maps: the mean is of both


# ----------------------------------------------------------------- trained on marked squares


@pytest.fixture(scope="module")
def marked(tmp_path_factory):
    """A small CNN trained and exported on images whose class is the size of a bright
    centred square (conftest.marked_npz): what tells the classes apart is there."""
    root = tmp_path_factory.mktemp("marked")
    (root / "data").mkdir()
    marked_npz(root / "data" / "bloodmnist.npz", counts=(480, 64, 64))
    config = Config.model_validate(
        {
            "name": "marked",
            "model": {"name": "cnn", "filters": [8, 16], "dense_units": 32},
            "data": {"root": str(root / "data"), "download": False},
            "train": {"epochs": 8, "batch_size": 32, "learning_rate": 0.003, "early_stopping_patience": 0},
            "output": {"runs_dir": str(root / "runs"), "export_dir": str(root / "saved_models")},
        }
    )
    result = train_module.train(config)
    assert result.metrics["accuracy"] > 0.9
    test = np.load(root / "data" / "bloodmnist.npz")
    return result.export_dir, test["test_images"], test["test_labels"][:, 0], config


def square_masks(labels):
    """Where class k's square is (side 2k + 2), with a one-pixel border: its edges."""
    masks = np.zeros((len(labels), 28, 28), bool)
    for i, k in enumerate(labels):
        masks[i, 12 - k : 16 + k, 12 - k : 16 + k] = True
    return masks


def test_maps_fall_on_the_square_and_change_when_the_top_is_randomised(marked):
    version, images, labels, _ = marked
    explainer = Explainer.load(version)
    result = explainer.explain(images)
    correct = result.predictions == labels
    assert correct.mean() > 0.9

    masks = square_masks(labels)[correct]
    share, uniform = mask_share(result.cams[correct], masks), masks.mean(axis=(1, 2))
    assert np.nanmean(share) > 2 * uniform.mean()
    assert np.nanmean(share > uniform) > 0.8

    # Adebayo et al.'s model-parameter randomisation: the last convolution and the head.
    (network,) = explainer.networks
    randomised = CamNetwork.of(randomized_top(network.network))(result.inputs.astype("float32"), result.predictions)
    rho = rank_correlation(result.cams, randomised)
    assert rho.mean() < RANDOMISED_MAX_CORRELATION
    # The check can fail: the same maps computed again correlate perfectly.
    assert rank_correlation(result.cams, network(result.inputs.astype("float32"), result.predictions)).mean() > 0.99


def test_explain_writes_a_figure_per_file_a_grid_and_a_csv_and_goes_on_past_bad_files(marked, tmp_path, capsys):
    version, images, labels, _ = marked
    files = tmp_path / "files"
    (files / "sub").mkdir(parents=True)
    for i in range(3):
        (files / f"cell{i}.png").write_bytes(encode(images[i], "PNG"))
    (files / "sub" / "cell0.png").write_bytes(encode(images[3], "PNG"))  # the same name in another folder
    (files / "broken.png").write_bytes(b"not an image")
    out = tmp_path / "out"

    assert main([str(version), str(files), str(tmp_path / "missing.png"), "--out", str(out)]) == 1
    printed = capsys.readouterr().out
    (folder,) = out.iterdir()
    assert printed.splitlines()[-1] == str(folder) and folder.name.startswith("marked-v1-")
    assert printed.startswith("Grad-CAM of network cnn at layer ")
    with open(folder / "explanations.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["path"] for r in rows] == [
        str(files / "broken.png"), *(str(files / f"cell{i}.png") for i in range(3)),
        str(files / "sub" / "cell0.png"), str(tmp_path / "missing.png"),
    ]  # fmt: skip
    assert rows[0]["error"].startswith("not an image file") and rows[-1]["error"] == "no such file or folder"
    explained = [r for r in rows if not r["error"]]
    class_names = json.loads((version / "assets.extra" / "class_names.json").read_text())
    assert all(r["label"] in class_names for r in explained)
    figures = sorted(p.name for p in folder.glob("0*.png"))
    assert figures == sorted(r["figure"] for r in explained) and len(set(figures)) == 4
    assert all(0 < float(r["probability"]) <= 1 for r in explained)
    assert (folder / "grid.png").stat().st_size > 10_000


def test_a_bad_version_is_one_line_and_exit_2_with_nothing_written(marked, tmp_path, capsys):
    from keras_blood.config.cli import run_main

    version, images, _, _ = marked
    (tmp_path / "cell.png").write_bytes(encode(images[0], "PNG"))
    out = tmp_path / "out"
    assert run_main(main, [str(tmp_path), str(tmp_path / "cell.png"), "--out", str(out)]) == 2
    assert "is not an exported model version" in capsys.readouterr().err

    older = tmp_path / "older" / "1"
    shutil.copytree(version, older)
    (older / KERAS_MODEL).unlink()  # as versions exported before model.keras
    assert run_main(main, [str(older), str(tmp_path / "cell.png"), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no model.keras" in err and "python -m keras_blood.train" in err
    assert not out.exists() or not list(out.iterdir())

    # The evaluate report says why it has no Grad-CAM panel.
    report = evaluate(older, output_dir=tmp_path / "reports").report_dir
    assert not (report / "gradcam_mistakes.png").exists()
    assert "no model.keras" in (report / "gradcam_mistakes.txt").read_text()


# ----------------------------------------------------------------- real data


def test_on_real_bloodmnist_the_maps_weigh_the_stained_cell_above_a_uniform_map(bloodmnist_root):
    """Check (b) on a slice, and check (a) on real cells. dropout03 fitted for 6 epochs on
    4,000 images (accuracy about 0.76) rather than a whole training run: the maps need a
    network that has learnt something, not an export."""
    overrides = [f"data.root={bloodmnist_root}", "data.max_examples=4000"]
    config = load_config(REPO / "configs" / "dropout03.yaml", overrides)
    data = task_module.load_checked_data(config)
    keras.utils.set_random_seed(0)
    model = build_model(config.model, data.image_shape, data.num_classes)
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="categorical_crossentropy")
    train = data.splits["train"]
    one_hot = np.eye(data.num_classes)[train.labels]
    model.fit(train.images.astype("float32"), one_hot, epochs=6, batch_size=128, verbose=0)

    test = data.splits["test"]
    explained = Explainer(model, config.data, data.class_names).explain(test.images)
    correct = explained.predictions == test.labels
    masks = color_mask(explained.inputs, config.data.color).numpy()
    kept = correct & masks.any(axis=(1, 2))
    share = mask_share(explained.cams[kept], masks[kept])
    uniform = masks[kept].mean(axis=(1, 2))
    assert kept.sum() > 1500
    assert np.nanmean(share) > uniform.mean() + 0.05  # measured: 0.45 against 0.35
    assert np.nanmean(share > uniform) > 0.6  # measured: 0.77

    (network,) = Explainer(model, config.data, data.class_names).networks
    randomised = CamNetwork.of(randomized_top(network.network))
    x = explained.inputs[correct].astype("float32")
    rho = rank_correlation(explained.cams[correct], randomised(x, explained.predictions[correct]))
    assert rho.mean() < RANDOMISED_MAX_CORRELATION
