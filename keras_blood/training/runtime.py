"""Seeds, devices, the cluster this process belongs to, and tf.distribute strategies."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import keras
import tensorflow as tf

from keras_blood.errors import ConfigError

TF_CONFIG = "TF_CONFIG"


def seed_everything(seed: int, deterministic: bool = False) -> None:
    keras.utils.set_random_seed(seed)  # Python, NumPy and TensorFlow
    if deterministic:
        tf.config.experimental.enable_op_determinism()


@dataclass(frozen=True)
class Cluster:
    """This process's place in a multi-worker cluster, as ``TF_CONFIG`` describes it
    (the variable Kubeflow's TFJob, Vertex AI and ``keras_blood.launch`` set)."""

    task_type: str
    task_index: int
    num_workers: int  # chief and workers: the processes that train
    has_chief: bool = False

    @property
    def is_chief(self) -> bool:
        """TensorFlow's rule: the ``chief`` task, or worker 0 where there is no chief."""
        return self.task_type == "chief" or (self.task_type == "worker" and self.task_index == 0 and not self.has_chief)

    @property
    def name(self) -> str:
        return f"{self.task_type}-{self.task_index}"


def cluster_from_env(environ=os.environ) -> Cluster | None:
    """The cluster from ``TF_CONFIG``, or None when this is a single process.

    A malformed value is a ConfigError naming what is wrong, not a traceback from deep in
    TensorFlow's start-up.
    """
    raw = environ.get(TF_CONFIG, "").strip()
    if not raw:
        return None
    try:
        spec = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{TF_CONFIG} is not valid JSON ({exc}): {raw[:80]!r}") from None
    if not isinstance(spec, dict) or "cluster" not in spec:
        return None  # TF_CONFIG without a cluster describes no multi-worker job
    cluster, task = spec.get("cluster"), spec.get("task")
    example = '{"cluster": {"worker": ["host1:port", "host2:port"]}, "task": {"type": "worker", "index": 0}}'
    if not isinstance(cluster, dict) or not all(isinstance(v, list) and v for v in cluster.values()):
        raise ConfigError(f"{TF_CONFIG}: 'cluster' must map task types to lists of host:port, e.g. {example}")
    if not isinstance(task, dict) or "type" not in task or "index" not in task:
        raise ConfigError(f"{TF_CONFIG}: 'task' must give this process's type and index, e.g. {example}")
    task_type, index = task["type"], task["index"]
    if task_type not in cluster or not isinstance(index, int) or not 0 <= index < len(cluster[task_type]):
        raise ConfigError(
            f"{TF_CONFIG}: task {task_type!r} index {index!r} is not in the cluster {sorted(cluster)} "
            f"({ {k: len(v) for k, v in cluster.items()} })"
        )
    if task_type not in ("chief", "worker"):
        raise ConfigError(
            f"{TF_CONFIG}: task type {task_type!r}; keras-blood trains with MultiWorkerMirroredStrategy, "
            "whose tasks are 'chief' and 'worker'"
        )
    workers = len(cluster.get("chief", [])) + len(cluster.get("worker", []))
    return Cluster(task_type, index, workers, has_chief="chief" in cluster)


def select_strategy(name: str = "auto", cluster: Cluster | None = None) -> tf.distribute.Strategy:
    """A tf.distribute strategy for ``train.distribute``.

    ``auto``: MultiWorkerMirroredStrategy when TF_CONFIG describes a cluster (one process
    per machine), MirroredStrategy when there are several local GPUs, else the default
    strategy, which places work on the single GPU if there is one and on the CPU otherwise.

    Nothing may touch the devices before MultiWorkerMirroredStrategy is created: listing
    them initialises TensorFlow's runtime, and collectives then fail with "Collective ops
    must be configured at program startup". So the cluster is read from the environment
    first and the GPUs are counted only when there is none.
    """
    if name == "auto":
        if cluster is not None:
            name = "multi_worker"
        elif len(tf.config.list_logical_devices("GPU")) > 1:
            name = "mirrored"
        else:
            name = "none"
    if name == "multi_worker":
        if cluster is None:
            raise ConfigError(
                f"train.distribute = 'multi_worker' needs {TF_CONFIG} to describe the cluster; "
                "start the workers with python -m keras_blood.launch, or set it on each machine"
            )
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def describe_devices(strategy: tf.distribute.Strategy, cluster: Cluster | None = None) -> str:
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        names = []
        for gpu in gpus:
            details = tf.config.experimental.get_device_details(gpu)
            names.append(f"{gpu.name} ({details.get('device_name', 'GPU')})")
        where = "GPU: " + ", ".join(names)
    else:
        where = f"CPU ({len(os.sched_getaffinity(0))} cores; TensorFlow sees no GPU)"
    role = (
        f"; {cluster.name} of {cluster.num_workers} workers" + (" (chief)" if cluster.is_chief else "")
        if cluster
        else ""
    )
    return f"{where}; strategy {type(strategy).__name__} with {strategy.num_replicas_in_sync} replica(s){role}"
