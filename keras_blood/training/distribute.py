"""Data-parallel training over several processes with MultiWorkerMirroredStrategy.

Every worker runs the same command; ``TF_CONFIG`` (see :mod:`keras_blood.training.runtime`) tells
each which one it is. Each worker reads its own shard of the training split and computes
gradients on ``train.batch_size / workers`` images a step; the strategy all-reduces the
gradients, so every worker applies the same update and holds the same weights.

Keras 3.15 cannot ``fit`` under this strategy as it ships (keras-team/keras#20585,
tensorflow/tensorflow#72388); :func:`make_fit_work` works around the two faults on one
model instance, without patching any Keras module. ``tests/training/test_distribute.py`` runs
an unpatched model on two workers and fails once upstream is fixed, to say the
workaround can go.
"""

from __future__ import annotations

import hashlib
import math
import types

import keras
import numpy as np
import tensorflow as tf

from keras_blood.errors import ConfigError


def is_multi_worker(strategy: tf.distribute.Strategy) -> bool:
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def make_fit_work(model: keras.Model, strategy: tf.distribute.Strategy) -> keras.Model:
    """Let ``model.fit`` / ``evaluate`` run under MultiWorkerMirroredStrategy (in place).

    1. ``fit`` first builds the model symbolically from one batch
       (``TensorFlowTrainer._maybe_symbolic_build``) and gets that batch by
       ``strategy.reduce("MEAN", batch)``: a cross-worker reduction of a distributed
       batch, which fails ("Attempt to convert a value (PerReplica ...)"). The build only
       needs the batch's shapes: this worker's local values serve.
    2. Each step's logs go through ``reduce_per_replica(..., "mean")``, which under
       multi-worker calls ``strategy.reduce("MEAN", value, axis=0)``; the logs are
       scalars and have no axis 0 ("Invalid reduction dimension 0"). The documented
       hooks ``train_step`` / ``test_step`` return them as 1-element vectors instead:
       the mean over workers of one identical value is that value.
    """
    if not is_multi_worker(strategy):
        return model
    build_from_local_batch(model, strategy)
    model.train_step = vector_logs(model.train_step)
    model.test_step = vector_logs(model.test_step)
    return model


def build_from_local_batch(model: keras.Model, strategy: tf.distribute.Strategy) -> None:
    """Fault 1 of :func:`make_fit_work` (keras-team/keras#20585): ``fit`` builds the model
    from this worker's own values of its first batch, not from a cross-worker reduction.

    Keras has no public hook for that step, so this replaces the private
    ``TensorFlowTrainer._maybe_symbolic_build(iterator=None, data_batch=None)`` on this one
    instance. ``tests/training/test_distribute.py`` fails if Keras renames it, changes its
    signature or stops calling it from ``fit`` and ``evaluate``: the override would then
    silently do nothing."""

    def local_values(value):
        if isinstance(value, tf.distribute.DistributedValues):
            return strategy.experimental_local_results(value)[0]
        return value

    def maybe_symbolic_build(self, iterator=None, data_batch=None):
        if iterator is not None:
            for _, _, batches in iterator:
                data_batch = keras.tree.map_structure(local_values, next(batches))
                break
        with strategy.scope():
            self._symbolic_build(data_batch=data_batch)

    model._maybe_symbolic_build = types.MethodType(maybe_symbolic_build, model)


def vector_logs(step):
    """Fault 2 of :func:`make_fit_work`: ``step``'s scalar logs as 1-element vectors."""

    def wrapped(data):
        logs = step(data)
        return keras.tree.map_structure(
            lambda v: tf.reshape(v, [-1]) if tf.is_tensor(v) and v.shape.rank == 0 else v, logs
        )

    return wrapped


def per_replica_batch(global_batch: int, strategy: tf.distribute.Strategy) -> int:
    replicas = strategy.num_replicas_in_sync
    if global_batch % replicas:
        raise ConfigError(
            f"train.batch_size = {global_batch}: the global batch must split evenly over "
            f"{replicas} replicas; use a multiple of {replicas}"
        )
    return global_batch // replicas


def shard_indices(num_examples: int, shard: int, num_shards: int) -> np.ndarray:
    """Every ``num_shards``-th example from ``shard``: shards differ in size by one at most."""
    return np.arange(shard, num_examples, num_shards)


def steps_per_epoch(num_examples: int, global_batch: int) -> int:
    """The same count on every worker (each repeats its shard), so none waits on another
    at the end of an epoch: an epoch still sees about every example once."""
    return math.ceil(num_examples / global_batch)


def distribute_training_data(strategy: tf.distribute.Strategy, make_shard, global_batch: int):
    """``make_shard(shard, num_shards, batch_size)`` builds one worker's repeated,
    batched pipeline over its own examples; the strategy calls it once per worker."""
    per_replica_batch(global_batch, strategy)  # a clear error before TensorFlow's

    def dataset_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
        batch = context.get_per_replica_batch_size(global_batch)
        return make_shard(context.input_pipeline_id, context.num_input_pipelines, batch)

    return strategy.distribute_datasets_from_function(dataset_fn)


def shard_validation_data(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """Validation stays whole-batched; the strategy splits each batch over the workers
    (DATA sharding), so the metrics are those of the whole split, exactly."""
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


def weights_fingerprint(model: keras.Model) -> str:
    """A short hash of every weight: equal on all workers when gradients were synchronised."""
    digest = hashlib.sha256()
    for weight in model.get_weights():
        digest.update(np.ascontiguousarray(weight).tobytes())
    return digest.hexdigest()[:16]


def barrier(strategy: tf.distribute.Strategy) -> None:
    """Wait until every worker gets here (a one-number all-reduce). Workers that are not
    the chief wait for its evaluation and export before they exit: a worker that leaves
    first is reported by TensorFlow as a crashed task, and a failed export then shows on
    every worker."""
    if is_multi_worker(strategy):
        strategy.reduce("SUM", strategy.run(lambda: tf.constant(1.0)), axis=None)
