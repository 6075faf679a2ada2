"""Seeds, devices and tf.distribute strategies."""

from __future__ import annotations

import json
import os

import keras
import tensorflow as tf


def seed_everything(seed: int, deterministic: bool = False) -> None:
    keras.utils.set_random_seed(seed)  # Python, NumPy and TensorFlow
    if deterministic:
        tf.config.experimental.enable_op_determinism()


def select_strategy(name: str = "auto") -> tf.distribute.Strategy:
    """A tf.distribute strategy for ``train.distribute``.

    ``auto``: MultiWorkerMirroredStrategy when TF_CONFIG describes a cluster (one process
    per machine), MirroredStrategy when there are several local GPUs, else the default
    strategy, which places work on the single GPU if there is one and on the CPU otherwise.
    """
    gpus = tf.config.list_logical_devices("GPU")
    if name == "auto":
        if "cluster" in json.loads(os.environ.get("TF_CONFIG", "{}") or "{}"):
            name = "multi_worker"
        elif len(gpus) > 1:
            name = "mirrored"
        else:
            name = "none"
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def describe_devices(strategy: tf.distribute.Strategy) -> str:
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        names = []
        for gpu in gpus:
            details = tf.config.experimental.get_device_details(gpu)
            names.append(f"{gpu.name} ({details.get('device_name', 'GPU')})")
        where = "GPU: " + ", ".join(names)
    else:
        where = f"CPU ({os.cpu_count()} cores; TensorFlow sees no GPU)"
    return f"{where}; strategy {type(strategy).__name__} with {strategy.num_replicas_in_sync} replica(s)"
