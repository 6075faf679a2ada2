"""Benchmark: does anything beyond AdaBN help ``adapt``? (not part of the tests)

    python benchmarks/adapt_objectives.py --kaggle DIR --bloodmnist DIR \\
        --pbc ../shared/data/pbc-captures/labels.tsv --bionet ../shared/data/labs/bionet_pk/labels.tsv \\
        --andrade ../shared/data/labs/leukocytes_andrade/labels.tsv \\
        --left-out kaggle=VERSION andrade=VERSION bloodmnist=VERSION bionet=VERSION

Each VERSION is one trained with that lab left out (``benchmarks/labs.py --leave-one-out``).
On the lab's left-out images (:func:`labs.left_out_images`: never a test split), it scores the
version zero-shot, after AdaBN (what ``python -m keras_blood.adapt`` does), and after AdaBN
followed by a few epochs of gradient steps on the batch-normalisation layers' scale and
offset only, their labels unread, with one of two objectives:

- ``entropy`` (TENT, Wang et al. 2021): the mean entropy of each image's prediction;
- ``information`` (SHOT's information maximisation, Liang et al. 2020): the same, minus the
  entropy of the mean prediction, so that the lab's images are not all pushed into one class;

then AdaBN once more, so that the statistics the version serves with match the new scales.
Balanced accuracy is over the classes with at least 5 images. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run from a checkout without installing
sys.path.insert(0, str(REPO / "benchmarks"))

import keras  # noqa: E402
import labs  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_blood.config.loading import load_config  # noqa: E402
from keras_blood.config.paths import version_config_file  # noqa: E402
from keras_blood.preparation.decode import Preparation  # noqa: E402
from keras_blood.serving.request import expand_inputs  # noqa: E402
from keras_blood.serving.version import load_keras_model, read_records  # noqa: E402
from keras_blood.training.adapt import adapt_batch_norm, batch_norm_layers, dropout_off, model_inputs  # noqa: E402


def balanced(model: keras.Model, batches: list, labels: np.ndarray, least: int = labs.MIN_SCORED) -> float:
    predicted = np.concatenate([np.argmax(model(batch, training=False), axis=-1) for batch in batches])
    recalls = [np.mean(predicted[labels == c] == c) for c in np.unique(labels) if np.sum(labels == c) >= least]
    return float(np.mean(recalls))


def objective_steps(model: keras.Model, batches: list, objective: str, rate: float, epochs: int) -> None:
    """Adam steps on the batch-normalisation scales and offsets, each batch normalised by its
    own statistics (as in training), minimising ``objective``."""
    variables = [v for layer in batch_norm_layers(model) for v in (layer.gamma, layer.beta)]
    optimizer = keras.optimizers.Adam(rate)
    order = np.random.default_rng(0)
    with dropout_off(model):
        for _ in range(epochs):
            for index in order.permutation(len(batches)):
                with tf.GradientTape() as tape:
                    p = model(batches[index], training=True)
                    loss = -tf.reduce_mean(tf.reduce_sum(p * tf.math.log(p + 1e-8), axis=-1))
                    if objective == "information":
                        mean = tf.reduce_mean(p, axis=0)
                        loss += tf.reduce_sum(mean * tf.math.log(mean + 1e-8))
                optimizer.apply(tape.gradient(loss, variables), variables)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for lab in ("kaggle", "bloodmnist", "pbc", "bionet", "andrade"):
        parser.add_argument(f"--{lab}", type=Path, required=True)
    parser.add_argument("--left-out", nargs="+", required=True, metavar="LAB=VERSION")
    parser.add_argument(
        "--objective", nargs="+", default=["entropy", "information"], choices=["entropy", "information"]
    )
    parser.add_argument("--rate", type=float, nargs="+", default=[1e-3, 1e-2])
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    variants = [(objective, rate) for objective in args.objective for rate in args.rate]
    heads = ["zero-shot", "AdaBN", *(f"{objective} {rate:g}" for objective, rate in variants)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for item in args.left_out:
            lab, version = item.split("=", 1)
            version = Path(version)
            class_names, recipe = read_records(version)
            listed = [
                line.split("\t") for line in labs.left_out_images(lab, args, Path(tmp)).read_text().splitlines()[1:]
            ]
            config = load_config(version_config_file(version))
            batches, failed = model_inputs(
                expand_inputs([file for file, _ in listed]), config, Preparation.from_json(recipe), 64
            )
            if failed:
                sys.exit(f"error: {failed[0][0]}: {failed[0][1]}")
            labels = np.array([class_names.index(label.lower()) for _, label in listed])
            scores = [balanced(load_keras_model(version), batches, labels)]
            model = load_keras_model(version)
            adapt_batch_norm(model, batches)
            scores.append(balanced(model, batches, labels))
            for objective, rate in variants:
                model = load_keras_model(version)
                adapt_batch_norm(model, batches)
                objective_steps(model, batches, objective, rate, args.epochs)
                adapt_batch_norm(model, batches)
                scores.append(balanced(model, batches, labels))
            rows.append((lab, len(labels), scores))
            print(f"{lab}: " + ", ".join(f"{h} {s:.3f}" for h, s in zip(heads, scores)), flush=True)
    print(f"\n| left out | images | {' | '.join(heads)} |\n|---|---|" + "---|" * len(heads))
    for lab, count, scores in rows:
        print(f"| {lab} | {count} | " + " | ".join(f"{s:.3f}" for s in scores) + " |")
    means = np.mean([scores for _, _, scores in rows], axis=0)
    print("| **mean** | | " + " | ".join(f"**{m:.3f}**" for m in means) + " |")


if __name__ == "__main__":
    main()
