"""An experiment built complete from its config, in the spirit of tensorflow/models'
``official/vision`` Task: single-purpose hooks that the trainer calls.

:meth:`Task.from_config` does in one step everything that can fail on user input before a
run folder exists: it reads the ``model.weights`` source, loads and checks the data, and
makes the preparation steps. The hooks then build what training needs:
:meth:`~Task.build_inputs` (the tf.data pipelines), :meth:`~Task.build_model`,
:meth:`~Task.build_optimizer`, :meth:`~Task.evaluate` (the test split, scored once) and
:meth:`~Task.publish` (the serving graph, published). The run's state (resume, roles,
ensemble members, transfer stages) belongs to :class:`keras_blood.training.trainer.Trainer`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from sklearn.utils.class_weight import compute_class_weight

from keras_blood.config.schema import Config
from keras_blood.data import DataBundle, load_data
from keras_blood.data.augment import make_augment
from keras_blood.data.pipeline import make_dataset
from keras_blood.data.splits import SPLITS
from keras_blood.errors import ConfigError, DataError
from keras_blood.evaluation.report import score_test_split
from keras_blood.files import write_atomic
from keras_blood.models.registry import build_model
from keras_blood.preparation.steps import make_preprocess
from keras_blood.serving.export import publish_model
from keras_blood.serving.publish import NotPublished, find_run_version
from keras_blood.training import distribute
from keras_blood.training.callbacks import SourceValidation
from keras_blood.training.keras_metrics import validation_metrics
from keras_blood.training.runs import FINISHED, RunError, RunFolder
from keras_blood.training.runtime import Cluster, seed_everything
from keras_blood.training.transfer import Transfer, prepare_transfer


def member_seeds(seed: int, count: int) -> list[int]:
    """Seeds for the members of an ensemble: the run's own, then ones drawn from
    ``(seed, member)`` by NumPy's SeedSequence. Not seed + 1, seed + 2: runs with
    seeds 0 and 1 would then share a member and their spread would look smaller."""
    return [seed] + [int(np.random.SeedSequence([seed, k]).generate_state(1)[0] >> 1) for k in range(1, count)]


def make_learning_rate(config: Config, steps_per_epoch: int):
    """A float, or a schedule of the optimizer step."""
    t = config.train
    learning_rate = t.learning_rate
    if t.schedule == "cosine":
        # Linear warm-up to the peak rate, then cosine decay to zero at the last step.
        warmup = t.warmup_epochs * steps_per_epoch
        learning_rate = keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=0.0 if warmup else t.learning_rate,
            decay_steps=max(1, t.epochs * steps_per_epoch - warmup),
            warmup_target=t.learning_rate if warmup else None,
            warmup_steps=warmup,
        )
    return learning_rate


def make_optimizer(config: Config, steps_per_epoch: int):
    t = config.train
    kwargs = {"learning_rate": make_learning_rate(config, steps_per_epoch)}
    if t.weight_decay:
        kwargs["weight_decay"] = t.weight_decay
    if t.optimizer == "sgd":
        return keras.optimizers.SGD(momentum=0.9, nesterov=True, **kwargs)
    return {
        "adam": keras.optimizers.Adam,
        "adamw": keras.optimizers.AdamW,
        "rmsprop": keras.optimizers.RMSprop,
    }[t.optimizer](**kwargs)


def load_checked_data(config: Config) -> DataBundle:
    """The data the config names, with every split training needs (DataError if not):
    training, validation (the checkpoint) and test (the report), but for those that
    data.val_fraction or data.test_fraction 0 leaves undrawn (DataConfig.undrawn_splits)."""
    data = load_data(config.data, config.seed)
    for split in SPLITS:
        if split not in data.splits or len(data.splits[split]) == 0:
            if split in config.data.undrawn_splits:
                continue
            raise DataError(f"data source {data.name!r} has no {split!r} examples")
    return data


def build(config: Config, input_shape, num_classes: int, strategy=None, member: int | None = None) -> keras.Model:
    """The configured model, built in ``strategy``'s scope under the run's precision policy.

    ``member``: this model's index in an ensemble; members get distinct names, which the
    averaged model needs.
    """
    # The policy is global in Keras: set it for this model only, and put it back after.
    previous_policy = keras.mixed_precision.global_policy()
    if config.train.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        with (strategy or tf.distribute.get_strategy()).scope():
            model = build_model(config.model, input_shape, num_classes)
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)
    if member is not None:
        model.name = f"{model.name}_{member + 1}"
    return model


def compile_for_training(
    model: keras.Model, config: Config, num_classes: int, steps_per_epoch: int, strategy=None
) -> None:
    """The optimizer, loss and metrics training uses, in ``strategy``'s scope."""
    with (strategy or tf.distribute.get_strategy()).scope():
        model.compile(
            optimizer=make_optimizer(config, steps_per_epoch),
            loss=keras.losses.CategoricalCrossentropy(label_smoothing=config.train.label_smoothing),
            # The validation views (ValidationTensorBoard) are read from these metrics.
            metrics=["accuracy", *validation_metrics(num_classes)],
            jit_compile=config.train.jit_compile,
        )


def balanced_class_weight(labels: np.ndarray, num_classes: int) -> dict[int, float]:
    """scikit-learn's "balanced" weights for the classes ``labels`` has, n / (k x count);
    1 for a class it lacks (no example of it carries a weight, and Keras wants every class)."""
    present = np.unique(labels)
    weights = dict(zip(present.tolist(), compute_class_weight("balanced", classes=present, y=labels).tolist()))
    return {cls: weights.get(cls, 1.0) for cls in range(num_classes)}


@dataclass
class TrainingInputs:
    """What ``fit`` takes for one member: the data, its steps per epoch (None: one pass),
    the validation data and the class weights (None: every class alike)."""

    data: Any
    steps: int | None
    validation: Any
    class_weight: dict[int, float] | None = None


@dataclass(frozen=True)
class Task:
    """One experiment: its config, data, preparation, distribution and weights source."""

    config: Config
    data: DataBundle
    strategy: Any  # tf.distribute.Strategy
    cluster: Cluster | None  # None for a single process
    transfer: Transfer | None  # what model.weights puts into each member
    preprocess: Callable | None  # the uint8 -> uint8 steps before the model

    @classmethod
    def from_config(cls, config: Config, strategy=None, cluster: Cluster | None = None) -> Task:
        # A weights source that is not one fails even before the data is read (or prepared).
        transfer = prepare_transfer(config)
        data = load_checked_data(config)
        # Seeded after the data is read: reading a TFDS copy draws from the global generators,
        # and a seeded run must start from the same weights whether its copy was there or not.
        seed_everything(config.seed, config.train.deterministic)
        strategy = strategy or tf.distribute.get_strategy()
        if data.source_names and distribute.is_multi_worker(strategy):
            raise ConfigError(
                "data.sources trains in one process for now (each source's validation is scored on "
                "one machine): unset TF_CONFIG, or train on one source"
            )
        return cls(config, data, strategy, cluster, transfer, make_preprocess(config.data))

    # ------------------------------------------------------------------ facts

    @property
    def is_chief(self) -> bool:
        return self.cluster is None or self.cluster.is_chief

    @property
    def ensemble(self) -> int:
        return self.config.train.ensemble

    @property
    def seeds(self) -> list[int]:
        return member_seeds(self.config.seed, self.ensemble)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """What the model takes: the data's images, or their cell crops (DataConfig.model_size)."""
        return (*self.config.data.model_size, self.data.image_shape[-1])

    def has_split(self, split: str) -> bool:
        return len(self.data.splits.get(split, ())) > 0

    @property
    def selection_key(self) -> str | None:
        """The validation figure that picks the checkpoint kept (Config.selection_key); None
        without a validation split: every epoch replaces the last, and the last is kept."""
        return self.config.selection_key if self.has_split("val") else None

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.data.splits["train"]) / self.config.train.batch_size)

    # ------------------------------------------------------------------ inputs

    def build_inputs(self, split: str, training: bool = False, seed: int | None = None, examples=None, batch=None):
        """The tf.data pipeline of ``split`` (``examples``: a shard of it instead)."""
        return make_dataset(
            self.data.splits[split] if examples is None else examples,
            self.data.num_classes,
            batch or self.config.train.batch_size,
            training=training,
            seed=self.config.seed if seed is None else seed,
            shuffle_buffer=self.config.data.shuffle_buffer,
            augment=make_augment(self.config.augment) if training else None,
            preprocess=self.preprocess,
        )

    def source_validation(self) -> list[keras.callbacks.Callback]:
        """data.sources: the callback that adds each source's validation figures to the logs
        (none for a single source)."""
        if not self.data.source_names:
            return []
        val = self.data.splits["val"]
        sources = {}
        for index, name in enumerate(self.data.source_names):
            rows = val.take(np.flatnonzero(val.source == index))
            sources[name] = (self.build_inputs("val", examples=rows), rows.labels)
        loss = keras.losses.CategoricalCrossentropy(label_smoothing=self.config.train.label_smoothing)
        return [SourceValidation(sources, loss)]

    def build_training_inputs(self, member: int) -> TrainingInputs:
        """Single process: the seeded pipeline, one pass an epoch. A cluster: each worker its
        own shard, repeated, the same number of steps on all (keras_blood.training.distribute)."""
        seed = self.seeds[member]
        validation = self.build_inputs("val") if self.has_split("val") else None
        train = self.data.splits["train"]
        class_weight = (
            balanced_class_weight(train.labels, self.data.num_classes)
            if self.config.train.class_weight == "balanced"
            else None
        )
        if not distribute.is_multi_worker(self.strategy):
            return TrainingInputs(self.build_inputs("train", training=True, seed=seed), None, validation, class_weight)

        def make_shard(shard: int, num_shards: int, batch: int):
            own = train.take(distribute.shard_indices(len(train), shard, num_shards))
            return self.build_inputs("train", training=True, seed=seed + shard, examples=own, batch=batch).repeat()

        global_batch = self.config.train.batch_size
        return TrainingInputs(
            distribute.distribute_training_data(self.strategy, make_shard, global_batch),
            distribute.steps_per_epoch(len(train), global_batch),
            None if validation is None else distribute.shard_validation_data(validation),
            class_weight,
        )

    # ------------------------------------------------------------------ model

    def build_model(self, member: int | None = None, strategy=None) -> keras.Model:
        """The configured model, built in ``strategy``'s scope (default: the task's)."""
        return build(self.config, self.input_shape, self.data.num_classes, strategy or self.strategy, member)

    def build_optimizer(self, config: Config | None = None) -> keras.optimizers.Optimizer:
        return make_optimizer(config or self.config, self.steps_per_epoch)

    def compile(self, model: keras.Model, config: Config | None = None) -> None:
        """Compile ``model`` for training (``config``: a transfer stage's, else the task's)."""
        compile_for_training(model, config or self.config, self.data.num_classes, self.steps_per_epoch, self.strategy)

    def build_member(self, member: int) -> keras.Model:
        """Member ``member`` (0 for a single model), built, compiled, with the weights of
        ``model.weights`` put in, ready for fit."""
        if member:  # member 0 keeps the run's seed state
            seed_everything(self.seeds[member], self.config.train.deterministic)
        model = self.build_model(member if self.ensemble > 1 else None)
        self.compile(model)
        if self.transfer is not None:
            what = self.transfer.apply(model, self.data.class_names)
            if member == 0:
                print(what, flush=True)
        return distribute.make_fit_work(model, self.strategy)

    def restore(self, member: int, run: RunFolder) -> keras.Model:
        """Member ``member`` with its best checkpoint's weights, outside any strategy:
        what is evaluated and exported (on the chief alone in a cluster)."""
        model = self.build_model(member if self.ensemble > 1 else None, strategy=tf.distribute.get_strategy())
        checkpoint = run.checkpoint(RunFolder.tag(member, self.ensemble))
        try:
            model.load_weights(str(checkpoint))
        except Exception as exc:  # h5py and Keras word a missing or damaged file many ways
            raise RunError(
                f"the best checkpoint {checkpoint} does not load "
                f"({type(exc).__name__}: {' '.join(str(exc).split())[:200]}); "
                "this run cannot be evaluated: start a new run"
            ) from None
        return model

    # ------------------------------------------------------------------ test and export

    def evaluate(self, members: list[keras.Model], histories: list[dict[str, list[float]]]):
        """The exported model, its test metrics and its named test probabilities:
        :func:`keras_blood.evaluation.report.score_test_split` on this task's pipelines."""
        return score_test_split(members, histories, self.build_inputs, self.data, self.config, self.seeds)

    def publish(self, model: keras.Model, metrics: dict[str, Any], run: RunFolder) -> Path | None:
        """Publish the evaluated model as a new version (or say why not). The run records the
        outcome and the version records its run, so a resumed run never publishes twice."""
        version = find_run_version(self.config, run.path)  # published before a kill
        if version is None:
            try:
                version = publish_model(
                    model, self.config, self.data.class_names, metrics, self.data.preparation, run=run.path
                )
            except NotPublished as declined:
                print(f"Not published: {declined}", flush=True)
                run.update_status(state=FINISHED, export=None, not_published=str(declined))
                return None
        write_atomic(run.path / "export_path.txt", f"{version}\n")
        run.update_status(state=FINISHED, export=str(version))
        return version
