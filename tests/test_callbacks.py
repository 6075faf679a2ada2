"""TensorBoard: validation confusion matrix and PR curves each epoch, as TensorBoard reads them."""

import keras
import numpy as np
import tensorflow as tf
from tensorboard.backend.event_processing.event_accumulator import TENSORS, EventAccumulator

from keras_blood.callbacks import ValidationTensorBoard, tag
from keras_blood.config import Config
from keras_blood.data.base import Split
from keras_blood.data.pipeline import make_dataset
from keras_blood.models import build_model
from tests.conftest import synthetic_npz

NAMES = ["basophil", "eosinophil", "erythroblast", "immature granulocyte",
         "lymphocyte", "monocyte", "neutrophil", "platelet"]  # fmt: skip


def test_each_epoch_writes_confusion_matrix_and_pr_curves(tmp_path):
    arrays = synthetic_npz(tmp_path / "data.npz", n=(64, 24, 8))
    train, val = (
        Split(arrays[f"{s}_images"], arrays[f"{s}_labels"].ravel().astype(np.int32)) for s in ("train", "val")
    )
    keras.utils.set_random_seed(0)
    tiny = {"name": "basic", "filters": [4, 4, 4], "dense_units": 8}
    config = Config.model_validate({"name": "t", "model": tiny})
    model = build_model(config.model, (28, 28, 3), 8)
    model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
    val_data = make_dataset(val, 8, 16, training=False, seed=0)
    callback = ValidationTensorBoard(tmp_path / "logs", val_data, val.labels, NAMES)
    model.fit(make_dataset(train, 8, 16, training=True, seed=0), validation_data=val_data,
              epochs=2, callbacks=[callback], shuffle=False, verbose=0)  # fmt: skip

    # One event file: TensorBoard follows only a run's newest file while it is written.
    assert len(list((tmp_path / "logs" / "validation").glob("events.out.tfevents.*"))) == 1
    events = EventAccumulator(str(tmp_path / "logs" / "validation"), size_guidance={TENSORS: 0})
    events.Reload()
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

    probs = model.predict(val_data, verbose=0)  # the weights after the last epoch
    for k, name in enumerate(NAMES):
        curves = events.Tensors(f"pr_curve/{tag(name)}/pr_curves")
        assert [e.step for e in curves] == [0, 1]
        tp, fp, tn, fn, precision, recall = tf.make_ndarray(curves[-1].tensor_proto)
        positives = int(np.sum(val.labels == k))
        # Threshold 0: everything is predicted positive.
        assert (tp[0], fp[0], recall[0]) == (positives, len(val.labels) - positives, 1.0)
        assert tp[50] == np.sum(probs[val.labels == k, k] >= 0.5)  # 101 thresholds: index 50 is 0.5
        assert np.all(tp + fn == positives) and np.all(fp + tn == len(val.labels) - positives)
