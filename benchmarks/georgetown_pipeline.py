"""Throughput of the Georgetown input pipeline, in images/second (not part of the tests).

    python benchmarks/georgetown_pipeline.py [--root DIR] [--images 2000] [--size 120x160] [--no-crop]

1. Colour extraction through tf.data: pure TensorFlow (keras_blood.preparation.color.extract_colors)
   vs the OpenCV reference through tf.numpy_function, at the model's input size and at
   the JPEGs' full 240x320; and the cell crop (keras_blood.preparation.cell_crop.crop_to_cell), pure TF.
2. JPEG decode + resize through tf.data: the first (cold) pass vs a pass from .cache().
3. Training throughput of dropout03 with and without colour extraction (both on cell
   crops unless --no-crop): the first epoch (which pays the one-off preprocessing before
   the cache) and the later epochs.

The goal it checks: colour extraction costs training no more than 10% of its throughput.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run from a checkout without installing

# The imports below stay after the log level and sys.path are set (hence noqa: E402):
# TensorFlow reads TF_CPP_MIN_LOG_LEVEL when it loads, and keras_blood is found through REPO.
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_blood.config.schema import Config  # noqa: E402
from keras_blood.data import load_data  # noqa: E402
from keras_blood.data.decoded import RESIZE_METHOD  # noqa: E402
from keras_blood.data.pipeline import make_dataset  # noqa: E402
from keras_blood.data.sources.blood_cell_images.builder import scan  # noqa: E402
from keras_blood.models.registry import build_model  # noqa: E402
from keras_blood.preparation.cell_crop import crop_to_cell  # noqa: E402
from keras_blood.preparation.color import extract_colors  # noqa: E402
from keras_blood.preparation.opencv_reference import extract_colors_cv2  # noqa: E402

DEFAULT_ROOT = REPO.parent / "shared" / "data" / "blood-cell-images" / "dataset2-master" / "images"


def rate(count: int, seconds: float) -> str:
    return f"{count / seconds:10,.0f} images/s"


def drain(ds: tf.data.Dataset) -> float:
    start = time.perf_counter()
    for _ in ds:
        pass
    return time.perf_counter() - start


def bench_color(images: np.ndarray, cfg, batch: int) -> tuple[float, float]:
    """Seconds per pass for (pure TF, OpenCV via numpy_function), after a warm-up pass."""

    def with_opencv(batch_images):
        return np.stack([extract_colors_cv2(image, cfg) for image in batch_images])

    def cv2_map(x):
        out = tf.numpy_function(with_opencv, [x], tf.uint8)
        return tf.ensure_shape(out, x.shape)

    times = []
    for fn in (lambda x: extract_colors(x, cfg), cv2_map):
        ds = tf.data.Dataset.from_tensor_slices(images).batch(batch)
        ds = ds.map(fn, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
        drain(ds)  # trace and warm up
        times.append(min(drain(ds) for _ in range(2)))
    return times[0], times[1]


def bench_crop(images: np.ndarray, config: Config, batch: int) -> float:
    """Seconds per pass of the pure-TF cell crop, after a warm-up pass."""
    ds = tf.data.Dataset.from_tensor_slices(images).batch(batch)
    ds = ds.map(
        lambda x: crop_to_cell(x, config.data.color, config.data.cell_crop), num_parallel_calls=tf.data.AUTOTUNE
    )
    drain(ds)
    return min(drain(ds) for _ in range(2))


def bench_decode(paths: list[str], size: tuple[int, int]) -> tuple[float, float]:
    def load(path):
        image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        return tf.cast(tf.round(tf.image.resize(image, size, method=RESIZE_METHOD)), tf.uint8)

    ds = tf.data.Dataset.from_tensor_slices(paths).map(load, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.cache().batch(256).prefetch(tf.data.AUTOTUNE)
    return drain(ds), drain(ds)  # first pass decodes (and fills the cache), second reads it


class EpochTimer:
    def __init__(self):
        import keras

        class Callback(keras.callbacks.Callback):
            def on_epoch_begin(cb, epoch, logs=None):
                cb.start = time.perf_counter()

            def on_epoch_end(cb, epoch, logs=None):
                self.seconds.append(time.perf_counter() - cb.start)

        self.seconds: list[float] = []
        self.callback = Callback()


def bench_training(config: Config, data, epochs: int, color: bool) -> list[float]:
    """Seconds per epoch of model.fit on the train split."""
    import keras

    from keras_blood.preparation.steps import make_preprocess

    keras.utils.set_random_seed(0)
    model = build_model(config.model, (*config.data.model_size, data.image_shape[-1]), data.num_classes)
    model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
    preprocess = make_preprocess(config.data.model_copy(update={"color_extraction": color}))
    train = data.splits["train"]
    ds = make_dataset(train, data.num_classes, config.train.batch_size, training=True, seed=0, preprocess=preprocess)
    timer = EpochTimer()
    model.fit(ds, epochs=epochs, verbose=0, callbacks=[timer.callback])
    return timer.seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="Kaggle dataset2-master/images")
    parser.add_argument("--images", type=int, default=2000, help="images per measurement")
    parser.add_argument("--size", default="120x160", help="decoded image HxW (data.image_size)")
    parser.add_argument("--crop", action=argparse.BooleanOptionalAction, default=True, help="data.cell_crop on")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=3, help="training epochs per variant (>= 2)")
    args = parser.parse_args()
    height, width = (int(v) for v in args.size.split("x"))
    if not (args.root / "TRAIN").is_dir():
        sys.exit(f"error: {args.root} has no TRAIN/ folder; pass --root DIR")

    data_section = {"name": "blood_cell_images", "root": str(args.root), "image_size": [height, width]}
    if not args.crop:
        data_section["cell_crop"] = None
    config = Config.model_validate(
        {
            "name": "bench",
            "model": {"name": "dropout03"},
            "data": {**data_section, "max_examples": args.images},
            "train": {"batch_size": args.batch},
        }
    )
    model_h, model_w = config.data.model_size
    print(
        f"TensorFlow {tf.__version__}, {os.cpu_count()} CPU cores; {args.images} images, "
        f"decoded {height}x{width}, model input {model_h}x{model_w}"
    )

    classes = sorted(p.name for p in (args.root / "TRAIN").iterdir() if p.is_dir())
    files = scan(args.root / "TRAIN", classes).paths
    paths = list(np.random.default_rng(0).permutation(files)[: args.images])

    print("\nJPEG decode + resize (tf.data, parallel map):")
    cold, cached = bench_decode(paths, (height, width))
    print(f"  cold (decode)      {rate(len(paths), cold)}")
    print(f"  cached             {rate(len(paths), cached)}   ({cold / cached:.0f}x)")

    data = load_data(config.data, config.seed)
    images = data.splits["train"].images
    full_size = config.data.model_copy(update={"image_size": (240, 320), "max_examples": 200})
    full = load_data(full_size).splits["train"].images
    if config.data.cell_crop is not None:
        print(f"\nCell crop {height}x{width} -> {model_h}x{model_w} through tf.data (batches of 64):")
        print(f"  pure TF            {rate(len(images), bench_crop(images, config, 64))}")
        crops = crop_to_cell(images, config.data.color, config.data.cell_crop).numpy()
    else:
        crops = images
    print("\nColour extraction through tf.data (batches of 64):")
    for label, batch_images in ((f"{model_h}x{model_w}", crops), ("240x320", full)):
        tf_s, cv_s = bench_color(batch_images, config.data.color, 64)
        n = len(batch_images)
        print(f"  {label:8s} pure TF {rate(n, tf_s)}   OpenCV (numpy_function) {rate(n, cv_s)}")

    print(f"\nTraining dropout03 ({len(images)} images, batch {args.batch}, {args.epochs} epochs):")
    results = {}
    for color in (False, True):
        seconds = bench_training(config, data, args.epochs, color)
        results[color] = seconds
        later = np.median(seconds[1:]) if len(seconds) > 1 else seconds[0]
        name = "colour extraction" if color else "original"
        print(f"  {name:18s} epoch 1 {rate(len(images), seconds[0])}   later epochs {rate(len(images), later)}")
    plain, colour = (np.median(results[c][1:]) for c in (False, True))
    first = results[True][0] / results[False][0] - 1
    print(
        f"\nColour extraction costs {1 - plain / colour:+.1%} of steady-state training throughput "
        f"({first:+.1%} in the first epoch, which pays the one-off extraction); goal: <= 10%."
    )


if __name__ == "__main__":
    main()
