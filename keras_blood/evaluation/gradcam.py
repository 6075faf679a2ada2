"""Grad-CAM explanations of an exported version's predictions.

    python -m keras_blood.explain saved_models/dropout03/1 cell.jpg scans/ "more/**/*.png" [--out explanations]

Each image file, of any size, is prepared as ``serving_bytes`` prepares it (the version's
recorded recipe, :mod:`keras_blood.preparation`), then cut to the white cell and colour
extracted when the version's config says so (:func:`keras_blood.preparation.steps.make_preprocess`):
what the model sees. The model is the version's ``model.keras`` (the SavedModel keeps no
Keras layers); its prediction is the exported model's, test-time augmentation and
ensemble averaging included.

The map is keras-io's Grad-CAM (Selvaraju et al. 2017): the gradients of the predicted
class's score (the final Dense layer's pre-softmax value) at the last feature map of the
network (the last layer with a 4-D output that is not pooling or dropout, found inside a
nested base such as VGG16's), averaged over the map's positions to weigh its channels;
the weighted sum of channels, through a ReLU, upsampled to the input and scaled to
``[0, 1]``. With test-time augmentation the base network is explained on the image as
given (without the views); an ensemble's map is the mean of its members' maps, each
scaled to ``[0, 1]`` first (:attr:`Explainer.explained` says which).

Output: a new folder ``<out>/<name>-v<version>-<timestamp>/`` (written under a hidden
name and renamed when complete) with one PNG per file (``0001-<name>.png``: the model's
input and the map overlaid, with the predicted class and probability), ``grid.png`` (the
first :data:`GRID_MAX` overlays) and ``explanations.csv`` (``path,label,probability,figure,error``).
A file that cannot be read gets its error in its row and the others go on. Exit status:
0 all files explained, 1 some failed, 2 a usage error (no version, no ``model.keras``).
"""

from __future__ import annotations

import contextlib
import csv
import itertools
import json
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from keras_blood.config.loading import load_config
from keras_blood.config.paths import EXTRA, RUN_CONFIG
from keras_blood.errors import ExportError, KerasBloodError
from keras_blood.evaluation.plots import plot_cam_grid, plot_explanation
from keras_blood.files import new_folder, staging
from keras_blood.models.temperature import TemperatureScaling
from keras_blood.models.tta import DihedralViews
from keras_blood.preparation.decode import Preparation
from keras_blood.preparation.steps import make_preprocess
from keras_blood.serving.predict import prepared_files, shown, unreadable
from keras_blood.serving.request import check_request
from keras_blood.serving.version import load_keras_model

GRID_MAX = 50  # overlays in grid.png; every file still gets its own PNG
BATCH = 32
CSV_NAME = "explanations.csv"


# ----------------------------------------------------------------------------- Grad-CAM


def feature_layer(network):
    """``(layer, owner)``: the layer whose output Grad-CAM weighs, and the model holding it
    (``network`` itself, or a nested base model such as VGG16's).

    The last layer with a 4-D output that is not pooling or dropout: the last convolution
    (or residual block) before the network pools space away. Pooling would only coarsen
    the map. A network without convolutions (fnn) gets its rescaled pixels.
    """
    skipped = (keras.layers.MaxPooling2D, keras.layers.AveragePooling2D, keras.layers.Dropout, keras.layers.InputLayer)

    def is_feature_map(layer) -> bool:
        return len(layer.output.shape) == 4 and not isinstance(layer, skipped)

    for layer in reversed(network.layers):
        if isinstance(layer, keras.Model):
            found = next((inner for inner in reversed(layer.layers) if is_feature_map(inner)), None)
            if found is not None:
                return found, layer
        elif is_feature_map(layer):
            return layer, network
    raise ExportError(f"model {network.name!r} has no layer with a 4-D output to explain")


def _class_scores(head, penultimate):
    """The final layer's scores before its softmax, Grad-CAM's y^c (gradients of the
    probabilities vanish where the model is confident)."""
    if isinstance(head, keras.layers.Dense) and head.activation is keras.activations.softmax:
        logits = ops.matmul(ops.cast(penultimate, "float32"), ops.cast(head.kernel, "float32"))
        return logits + ops.cast(head.bias, "float32") if head.use_bias else logits
    return ops.cast(head(penultimate), "float32")


def cam_view(network):
    """``(view, layer)``: a Functional model, float pixels -> ``[feature map, the final
    layer's input]``, sharing ``network``'s weights; and the feature layer's name."""
    layer, owner = feature_layer(network)
    head = network.layers[-1]
    if owner is network and not isinstance(network, keras.Sequential):
        return keras.Model(network.input, [layer.output, head.input]), layer.name
    # A Sequential model loaded from a file has called its layers once per layer added
    # (their .output is not in its graph), and a layer inside a nested base (VGG16's) is
    # not in the outer graph: so the layers are called again on a new input, in order,
    # the base split in two. Both are chains of layers; CamNetwork checks the result.
    split = {} if owner is network else {owner: keras.Model(owner.inputs, [layer.output, owner.output])}
    inputs = keras.Input(shape=network.input_shape[1:], name="pixels")
    x, features = inputs, None
    for step in network.layers[:-1]:
        if isinstance(step, keras.layers.InputLayer):
            continue
        if step in split:
            features, x = split[step](x)
        else:
            x = step(x)
            features = x if step is layer else features
    return keras.Model(inputs, [features, x]), layer.name


@dataclass
class CamNetwork:
    """One network's Grad-CAM view: float pixels -> ``(feature map, class scores)``."""

    network: Any  # keras.Model
    layer: str  # the feature layer's name
    view: Any  # keras.Model: pixels -> [feature map, the final layer's input]

    @classmethod
    def of(cls, network) -> CamNetwork:
        view, layer = cam_view(network)
        cam = cls(network, layer, view)
        cam._check()
        return cam

    def forward(self, x):
        features, penultimate = self.view(x, training=False)
        return features, _class_scores(self.network.layers[-1], penultimate)

    def _check(self) -> None:
        """The view must compute what the network computes (a layout the views do not
        handle would otherwise give maps of some other function)."""
        x = np.random.default_rng(0).uniform(0, 255, (2, *self.network.input_shape[1:])).astype("float32")
        _, scores = self.forward(x)
        expected = ops.cast(self.network(x, training=False), "float32").numpy()
        got = ops.softmax(scores, axis=-1).numpy() if scores.shape == expected.shape else None
        # Loose: a mixed-precision head computes in bfloat16, the scores here in float32.
        if got is None or not np.allclose(got, expected, atol=2e-2):
            raise ExportError(f"cannot compute Grad-CAM for model {self.network.name!r}: unsupported layout")

    def __call__(self, x, classes) -> np.ndarray:
        """float32 ``[N, h, w]`` maps in ``[0, 1]`` at the input's size, for ``classes`` ``[N]``."""
        x = tf.convert_to_tensor(x, tf.float32)
        with tf.GradientTape() as tape:
            tape.watch(x)  # so that a feature map computed without weights (fnn's pixels) is recorded too
            features, scores = self.forward(x)
            score = tf.gather(scores, tf.convert_to_tensor(classes, tf.int32), batch_dims=1)
        gradients = tf.cast(tape.gradient(score, features), tf.float32)
        weights = tf.reduce_mean(gradients, axis=(1, 2))  # one weight per channel, per image
        cam = tf.nn.relu(tf.einsum("nhwc,nc->nhw", tf.cast(features, tf.float32), weights))
        cam = tf.image.resize(cam[..., None], x.shape[1:3], method="bilinear")[..., 0]
        return normalise(cam.numpy())


def normalise(maps: np.ndarray) -> np.ndarray:
    """Each map divided by its maximum (an all-zero map stays zero)."""
    peak = maps.reshape(len(maps), -1).max(axis=1)
    return (maps / np.where(peak > 0, peak, 1.0)[:, None, None]).astype(np.float32)


def base_networks(model) -> tuple[list, str | None]:
    """The network(s) to explain inside an exported model, and the test-time
    augmentation mode around them (None without).

    Temperature scaling (:mod:`keras_blood.models.temperature`) is unwrapped first. Test-time
    augmentation (:class:`keras_blood.models.DihedralViews`) is unwrapped to the
    network inside, explained on the image as given; an ensemble (``layers.Average`` over
    member models) to its members, whose maps are averaged.
    """
    if any(isinstance(layer, TemperatureScaling) for layer in model.layers):
        # Temperature scaling divides the log-probabilities by one number: it changes
        # neither the class nor, once normalised, the map. Explain the model inside.
        (model,) = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    tta = next((layer.mode for layer in model.layers if isinstance(layer, DihedralViews)), None)
    if tta is not None:
        (model,) = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    if any(isinstance(layer, keras.layers.Average) for layer in model.layers):
        return [layer for layer in model.layers if isinstance(layer, keras.Model)], tta
    return [model], tta


def describe(networks: list[CamNetwork], tta: str | None) -> str:
    """What the maps are, in one line (printed, and the title of the grid)."""
    where = [f"{n.network.name} at layer {n.layer}" for n in networks]
    if len(networks) > 1:
        what = f"mean of the Grad-CAM maps of the {len(networks)} ensemble members ({', '.join(where)})"
    else:
        what = f"Grad-CAM of {'the base network' if tta else 'network'} {where[0]}"
    if tta:
        what += f", without the {tta} test-time views (class and probability are with them)"
    return what


@dataclass
class Explanation:
    inputs: np.ndarray  # uint8 [N, h, w, 3]: what the model saw
    probs: np.ndarray  # float [N, classes]: the exported model's
    cams: np.ndarray  # float32 [N, h, w] in [0, 1]

    @property
    def predictions(self) -> np.ndarray:
        return self.probs.argmax(axis=1)


class Explainer:
    """Grad-CAM for an exported version: :meth:`explain` takes pixels at the data's size."""

    def __init__(self, model, data_config, class_names: list[str], preparation=None):

        self.model = model
        self.class_names = class_names
        self.preparation = preparation
        self.preprocess = make_preprocess(data_config)
        members, tta = base_networks(model)
        self.networks = [CamNetwork.of(member) for member in members]
        self.explained = describe(self.networks, tta)

    @classmethod
    def load(cls, version: str | Path, config=None) -> Explainer:
        """From a version folder; ``config`` defaults to the one recorded with it."""

        version = Path(version)
        model = load_keras_model(version)  # ExportError: not a version, or no model.keras
        extra = version / EXTRA
        try:
            class_names = json.loads((extra / "class_names.json").read_text())
            preparation = Preparation.from_json(json.loads((extra / "preparation.json").read_text()))
        except (OSError, ValueError) as exc:
            raise ExportError(f"{version}: unreadable assets.extra ({exc})") from None
        config = config or load_config(extra / RUN_CONFIG)
        return cls(model, config.data, class_names, preparation)

    def explain(self, pixels: np.ndarray) -> Explanation:
        """uint8 ``[N, H, W, 3]`` at the data's size (what ``serving_default`` takes)."""
        inputs = tf.convert_to_tensor(pixels, tf.uint8)
        if self.preprocess is not None:
            inputs = self.preprocess(inputs)
        x = tf.cast(inputs, tf.float32)
        probs = ops.cast(self.model(x, training=False), "float32").numpy()
        classes = probs.argmax(axis=1)
        cams = normalise(np.mean([network(x, classes) for network in self.networks], axis=0))
        return Explanation(inputs.numpy(), probs, cams)


def gradcam_panel(version: str | Path, config, pixels: np.ndarray, captions: list[str], path: Path, title: str) -> str:
    """The evaluate report's Grad-CAM panel of ``pixels`` (its most confident mistakes, at
    the data's size), each explained for its predicted class. Returns a line saying what
    was written; a version without ``model.keras`` gets ``<path>.txt`` saying why instead."""
    try:
        explainer = Explainer.load(version, config)
    except ExportError as exc:
        note = path.with_suffix(".txt")
        note.write_text(f"No Grad-CAM panel: {exc}\n")
        return f"No Grad-CAM panel ({note.name}): {exc}"

    result = explainer.explain(pixels) if len(pixels) else Explanation(pixels, np.zeros((0, 0)), np.zeros((0,)))
    plot_cam_grid(result.inputs, result.cams, captions, path, f"{title}\n{explainer.explained}")
    return f"Grad-CAM of the mistakes: {path.name} ({explainer.explained})"


# ----------------------------------------------------------------------------- the command


def figure_name(number: int, path: str) -> str:
    """``0001-<file name>.png``: numbered, since files in two folders may share a name."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(path).stem)[:60] or "image"
    return f"{number:04d}-{stem}.png"


def name_version(version: Path, between: str) -> str:
    """``dropout03 v1`` / ``dropout03-v1`` for ``saved_models/dropout03/1``."""
    return f"{version.resolve().parent.name}{between}{version.resolve().name}"


def explain_files(
    version: str | Path, inputs: Sequence[str], out_dir: Path = Path("explanations"), out=None
) -> tuple[Path, int]:
    """Explain the image files ``inputs``; returns the new folder and how many files failed."""
    out = out or sys.stdout

    version = Path(version)
    entries = [(path, error or unreadable(path)) for path, error in check_request(version, inputs)]
    explainer = Explainer.load(version)

    # Written under a hidden name beside the result and renamed when complete.
    with contextlib.ExitStack() as cleanup:  # the staged folder goes unless it was published
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
            stage = cleanup.enter_context(staging(out_dir, prefix=".explain-", suffix=".part", folder=True))
        except OSError as exc:
            raise KerasBloodError(f"--out {out_dir}: cannot write there ({exc.strerror or exc})") from None
        print(explainer.explained, file=out)
        try:
            failed, grid = write_explanations(explainer, entries, stage.path, out)
            title = f"{name_version(version, ' v')}\n{explainer.explained}"
            plot_cam_grid(grid["images"], grid["cams"], grid["captions"], stage.path / "grid.png", title)
            folder = new_folder(out_dir, f"{name_version(version, '-v')}-")
            try:
                stage.publish(folder)  # replaces the empty folder just claimed
            except OSError:
                folder.rmdir()
                raise
        except OSError as exc:
            raise KerasBloodError(f"cannot write the explanations in {out_dir}: {exc.strerror or exc}") from None
    print(f"{len(entries) - failed} of {len(entries)} files explained, {failed} failed", file=out)
    return folder, failed


def write_explanations(
    explainer: Explainer, entries: list[tuple[str, str]], folder: Path, out
) -> tuple[int, dict[str, list]]:
    """A figure per file in ``folder`` and a row of ``explanations.csv`` (its error where it
    cannot be read), a batch at a time. Returns how many files failed and the grid: the
    first :data:`GRID_MAX` overlays and their captions."""
    failed = 0
    grid: dict[str, list] = {"images": [], "cams": [], "captions": []}
    with (folder / CSV_NAME).open("x", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "probability", "figure", "error"])
        images = prepared_files(entries, explainer.preparation, BATCH)
        for start in range(0, len(entries), BATCH):
            chunk = entries[start : start + BATCH]
            loaded = list(itertools.islice(images, len(chunk)))
            good = [image for image, _ in loaded if image is not None]
            result = explainer.explain(np.stack(good)) if good else None
            k = 0
            for number, ((path, _), (image, error)) in enumerate(zip(chunk, loaded), start=start + 1):
                name = shown(path)
                if image is None:
                    failed += 1
                    writer.writerow([name, "", "", "", error])
                    print(f"{name}: error: {error}", file=out)
                    continue
                row, caption = explained_file(
                    explainer.class_names, result, k, figure_name(number, path), name, folder, grid
                )
                writer.writerow(row)
                print(f"{name}: {caption}", file=out)
                k += 1
            out.flush()
    return failed, grid


def explained_file(
    class_names: list[str], result: Explanation, k: int, figure: str, name: str, folder: Path, grid: dict[str, list]
) -> tuple[list[str], str]:
    """The figure of ``result``'s ``k``-th image (file ``name``) in ``folder``, its overlay
    added to ``grid`` while that has room; returns its row of ``explanations.csv`` and its
    caption (the class and its probability)."""
    label, p = class_names[result.predictions[k]], result.probs[k].max()
    caption = f"{label} ({p:.2f})"
    plot_explanation(result.inputs[k], result.cams[k], f"{Path(name).name}: {caption}", folder / figure)
    if len(grid["images"]) < GRID_MAX:
        grid["images"].append(result.inputs[k])
        grid["cams"].append(result.cams[k])
        grid["captions"].append(f"{Path(name).name[:24]}\n{caption}")
    return [name, label, f"{p:.6f}", figure, ""], caption
