"""Reading the data through the TFDS builders against reading the files directly (not part of the tests).

    python benchmarks/tfds_load.py [--bloodmnist DIR] [--kaggle DIR] [--repeats 3]

For each source, in one process (TensorFlow started before any timing):
- cold: load_data with an empty TFDS folder: prepare the copy, then read it (what the
  first run pays, once);
- warm: keras-blood's load_data from the prepared copy (every later run; the in-process
  memo is cleared before each repeat);
- direct: the same arrays without TFDS, as keras-blood read them before the builders:
  np.load of the .npz, or a parallel tf.data decode + resize of the JPEGs from their paths.
The arrays of warm and direct are checked equal. Warm and direct alternate; each time
is the best of --repeats.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run from a checkout without installing

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_blood.config.schema import DataConfig  # noqa: E402
from keras_blood.data import decoded, load_data  # noqa: E402
from keras_blood.data.sources.blood_cell_images.builder import class_folders, scan, split_by_source  # noqa: E402
from keras_blood.data.sources.bloodmnist import loader as bloodmnist  # noqa: E402

SHARED = REPO.parent / "shared" / "data"


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def clear_memos() -> None:
    bloodmnist.read_splits.cache_clear()
    decoded.load_decoded.cache_clear()
    decoded.encoded_splits.cache_clear()


def direct_bloodmnist(root: Path) -> dict[str, np.ndarray]:
    with np.load(root / "bloodmnist.npz") as arrays:
        return {split: arrays[f"{split}_images"] for split in ("train", "val", "test")}


def direct_kaggle(root: Path, size: tuple[int, int], seed: int) -> dict[str, np.ndarray]:
    names = class_folders(root / "TRAIN")
    train = scan(root / "TRAIN", names)
    train_idx, val_idx = split_by_source(train, 0.2, seed)
    folders = {
        "train": train.take(train_idx),
        "val": train.take(val_idx),
        "test": scan(root / "TEST", names),
        "test_simple": scan(root / "TEST_SIMPLE", names),
    }

    def load(path):
        image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        image = tf.image.resize(image, size, method=decoded.RESIZE_METHOD)
        return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)

    paths = np.concatenate([f.paths for f in folders.values()])
    ds = tf.data.Dataset.from_tensor_slices(paths).map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    images = np.concatenate(list(ds.batch(512).as_numpy_iterator()))
    bounds = np.cumsum([0] + [len(f) for f in folders.values()])
    return {name: images[a:b] for name, a, b in zip(folders, bounds[:-1], bounds[1:])}


def run(name: str, config: DataConfig, direct, seed: int, repeats: int) -> None:
    with tempfile.TemporaryDirectory() as tfds_dir:
        config = config.model_copy(update={"tfds_dir": Path(tfds_dir)})
        start = time.perf_counter()
        load_data(config, seed)
        cold = time.perf_counter() - start

        def warm():
            clear_memos()
            return load_data(config, seed)

        # Alternated, so that both see the same load on a shared machine.
        runs = [(timed(warm), timed(direct)) for _ in range(repeats)]
        size_mb = sum(f.stat().st_size for f in Path(tfds_dir).rglob("*") if f.is_file()) / 1e6
    (warm_s, data), (direct_s, arrays) = (min(times, key=lambda t: t[0]) for times in zip(*runs))
    for split, images in arrays.items():
        assert np.array_equal(data.splits[split].images, images), f"{name} {split}: arrays differ"
    count = sum(len(s) for s in data.splits.values())
    print(
        f"{name:<34} {count:>6} images  cold {cold:6.1f} s  warm load {warm_s:5.2f} s  "
        f"direct {direct_s:5.2f} s  (prepared copy {size_mb:.0f} MB)",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bloodmnist", type=Path, default=SHARED / "bloodmnist")
    parser.add_argument("--kaggle", type=Path, default=SHARED / "blood-cell-images" / "dataset2-master" / "images")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    list(tf.data.Dataset.range(2).map(lambda x: x + 1))  # start TensorFlow before any timing
    import tensorflow_datasets as tfds

    tfds.disable_progress_bar()

    if (args.bloodmnist / "bloodmnist.npz").is_file():
        run(
            "bloodmnist 28x28 (all splits)",
            DataConfig(root=args.bloodmnist),
            lambda: direct_bloodmnist(args.bloodmnist),
            seed=42,
            repeats=args.repeats,
        )
    if (args.kaggle / "TRAIN").is_dir():
        config = DataConfig(name="blood_cell_images", root=args.kaggle)
        run(
            "blood_cell_images 120x160 (all)",
            config,
            lambda: direct_kaggle(args.kaggle, (120, 160), 42),
            seed=42,
            repeats=args.repeats,
        )


if __name__ == "__main__":
    main()
