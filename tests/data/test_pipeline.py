"""The tf.data pipeline (keras_blood.data.pipeline): batches, order and seeded shuffling."""

import numpy as np

from keras_blood.data.base import Split
from keras_blood.data.pipeline import make_dataset


def _split(n=50):
    images = np.arange(n * 4 * 4 * 3, dtype=np.uint32).reshape(n, 4, 4, 3) % 256
    return Split(images.astype(np.uint8), (np.arange(n) % 5).astype(np.int32))


def test_batches_are_float_pixels_and_one_hot_labels():
    batches = list(make_dataset(_split(), 5, 16, training=False, seed=0))
    assert [b[0].shape[0] for b in batches] == [16, 16, 16, 2]
    images, labels = batches[0]
    assert images.dtype.name == "float32" and images.shape[1:] == (4, 4, 3)
    assert float(images.numpy().max()) > 1.0  # scaling happens inside the model
    np.testing.assert_array_equal(labels.numpy().argmax(1), np.arange(16) % 5)


def test_evaluation_order_is_kept():
    split = _split()
    labels = np.concatenate([y.numpy().argmax(1) for _, y in make_dataset(split, 5, 7, training=False, seed=0)])
    np.testing.assert_array_equal(labels, split.labels)


def test_training_shuffle_is_seeded_and_reshuffles_each_epoch():
    first = make_dataset(_split(), 5, 50, training=True, seed=3)
    a = [b[0].numpy()[:, 0, 0, 0] for b in first.repeat(2)]
    second = make_dataset(_split(), 5, 50, training=True, seed=3)
    b = [b[0].numpy()[:, 0, 0, 0] for b in second.repeat(2)]
    np.testing.assert_array_equal(a[0], b[0])  # same seed, same order
    assert not np.array_equal(a[0], a[1])  # a new order each epoch
    assert sorted(a[0]) == sorted(_split().images[:, 0, 0, 0])  # nothing lost
