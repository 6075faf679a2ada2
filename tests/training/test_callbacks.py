"""The TensorBoard callback (keras_blood.training.callbacks): validation confusion matrix
and PR curves each epoch, as TensorBoard reads them."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing.event_accumulator import TENSORS, EventAccumulator

from keras_blood.config.schema import Config
from keras_blood.data.base import Split
from keras_blood.data.pipeline import make_dataset
from keras_blood.data.sources.bloodmnist.builder import CLASS_NAMES
from keras_blood.evaluation.metrics import classification_metrics
from keras_blood.models.registry import build_model
from keras_blood.training.callbacks import ValidationTensorBoard, tag
from keras_blood.training.keras_metrics import ScoreHistogram, validation_metrics
from tests.helpers import synthetic_npz

NAMES = list(CLASS_NAMES)


@pytest.fixture
def fit(tmp_path):
    """fit(callback, epochs): a tiny model compiled as train.py compiles it, trained with
    ``callback``; returns the validation split, its dataset and the model."""
    arrays = synthetic_npz(tmp_path / "data.npz", n=(64, 24, 8))
    train, val = (
        Split(arrays[f"{s}_images"], arrays[f"{s}_labels"].ravel().astype(np.int32)) for s in ("train", "val")
    )
    val_data = make_dataset(val, 8, 16, training=False, seed=0)

    def run(callback, epochs=2):
        keras.utils.set_random_seed(0)
        tiny = {"name": "basic", "filters": [4, 4, 4], "dense_units": 8}
        model = build_model(Config.model_validate({"name": "t", "model": tiny}).model, (28, 28, 3), 8)
        model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy", *validation_metrics(8)])
        model.fit(
            make_dataset(train, 8, 16, training=True, seed=0),
            validation_data=val_data,
            epochs=epochs,
            callbacks=[callback],
            shuffle=False,
            verbose=0,
        )
        return val, val_data, model

    return run


def read_events(log_dir):
    events = EventAccumulator(str(log_dir), size_guidance={TENSORS: 0})
    events.Reload()
    return events


def test_each_epoch_writes_confusion_matrix_and_pr_curves(fit, tmp_path):
    val, val_data, model = fit(ValidationTensorBoard(tmp_path / "logs", NAMES, image_every=1))

    # One event file: TensorBoard follows only a run's newest file while it is written.
    assert len(list((tmp_path / "logs" / "validation").glob("events.out.tfevents.*"))) == 1
    events = read_events(tmp_path / "logs" / "validation")
    assert list(events.PluginTagToContent("images")) == ["confusion_matrix"]
    pr_tags = sorted(events.PluginTagToContent("pr_curves"))
    assert pr_tags == sorted(f"pr_curve/{tag(n)}/pr_curves" for n in NAMES)
    assert "pr_curve/immature_granulocyte/pr_curves" in pr_tags
    scalars = set(events.PluginTagToContent("scalars"))
    assert {"epoch_loss", "epoch_accuracy", "epoch_f1_macro", "epoch_auc"} <= scalars

    images = events.Tensors("confusion_matrix")
    assert [e.step for e in images] == [0, 1]
    png = tf.make_ndarray(images[-1].tensor_proto)[2]  # [width, height, PNG bytes]
    assert tf.io.decode_png(png).shape[0] > 300

    # The views are of the last epoch's validation pass: the weights after that epoch.
    probs = model.predict(val_data, verbose=0)
    last = {name: tf.make_ndarray(events.Tensors(name)[-1].tensor_proto) for name in ("epoch_f1_macro", "epoch_auc")}
    assert last["epoch_f1_macro"] == pytest.approx(classification_metrics(val.labels, probs, NAMES)["f1_macro"])
    # The histogram's AUC (how close it is to the exact one: tests/training/test_keras_metrics.py).
    histogram = ScoreHistogram(8)
    histogram.update_state(np.eye(8)[val.labels], probs)
    assert last["epoch_auc"] == pytest.approx(float(histogram.result()))
    for k, name in enumerate(NAMES):
        curves = events.Tensors(f"pr_curve/{tag(name)}/pr_curves")
        assert [e.step for e in curves] == [0, 1]
        tp, fp, tn, fn, precision, recall = tf.make_ndarray(curves[-1].tensor_proto)
        positives = int(np.sum(val.labels == k))
        # Threshold 0: everything is predicted positive.
        assert (tp[0], fp[0], recall[0]) == (positives, len(val.labels) - positives, 1.0)
        assert tp[50] == np.sum(probs[val.labels == k, k] >= 0.5)  # 101 thresholds: index 50 is 0.5
        assert np.all(tp + fn == positives) and np.all(fp + tn == len(val.labels) - positives)


@pytest.mark.slow
def test_the_figure_is_drawn_every_n_epochs_and_after_the_last(fit, tmp_path):
    fit(ValidationTensorBoard(tmp_path / "logs", NAMES, image_every=2), epochs=5)
    events = read_events(tmp_path / "logs" / "validation")
    assert [e.step for e in events.Tensors("confusion_matrix")] == [1, 3, 4]
    assert [e.step for e in events.Tensors(f"pr_curve/{tag(NAMES[0])}/pr_curves")] == [0, 1, 2, 3, 4]


def test_a_worker_that_does_not_write_leaves_no_files(fit, tmp_path):
    fit(ValidationTensorBoard(tmp_path / "logs", NAMES, write=False))
    assert not (tmp_path / "logs").exists()


def test_a_model_compiled_without_the_validation_metrics_is_named(tmp_path):
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(8, activation="softmax")])
    model.compile(optimizer="sgd", loss="categorical_crossentropy", metrics=["accuracy"])
    x, y = np.zeros((4, 2), "float32"), np.eye(8, dtype="float32")[:4]
    with pytest.raises(ValueError, match="validation_metrics"):
        model.fit(x, y, validation_data=(x, y), callbacks=[ValidationTensorBoard(tmp_path, NAMES)], verbose=0)
