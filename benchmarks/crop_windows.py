"""Benchmark: how large the extent crop's window comes out in each lab (not part of the tests)

    python benchmarks/crop_windows.py --kaggle DIR --bloodmnist DIR \\
        --bionet ../shared/data/labs/bionet_pk/labels.tsv \\
        --andrade ../shared/data/labs/leukocytes_andrade/labels.tsv [--reach 0.8 1.4]

``fit: extent`` sizes each window by the cell's stained area, so that a cell comes out at one
scale whatever the lab's magnification. Where it does not, one lab's cells fill their crops as
no other lab's do, and a model reads that as a class (a large round cell: a monocyte). This
takes the training images of ``configs/wbc_labs.yaml``'s four sources, in the frame training
puts them in, and prints the median window side (the geometric mean of its height and width,
a fraction of the frame's shorter side) of each lab's cells of each class, for each
``data.cell_crop.extent_reach`` asked for.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run from a checkout without installing

LABS = ("kaggle", "bloodmnist", "bionet", "andrade")


def window_sides(images, data, reach: float):
    """The median-ready window sides of ``images`` (a fraction of the shorter side) at ``reach``."""
    import numpy as np
    import tensorflow as tf

    from keras_blood.preparation.cell_crop import cell_centres, color_mask, extent_sides

    height, width = images.shape[1:3]
    crop, color = data.cell_crop, data.color
    batch = tf.constant(images)
    mask = color_mask(batch, color)
    centres = cell_centres(batch, color, crop.window_side(height, width), mask)
    sides = extent_sides(batch, centres, color, crop.extent_scale, crop.extent_aspect, mask, crop.extent_max, reach)
    return np.sqrt(np.prod(sides.numpy(), axis=1)) / min(height, width)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for lab in LABS:
        parser.add_argument(f"--{lab}", type=Path, required=True)
    parser.add_argument("--reach", type=float, nargs="+", default=[0.8, 1.4])
    parser.add_argument("--max-examples", type=int, default=400, help="of Kaggle's and BloodMNIST's, a seeded draw")
    args = parser.parse_args()
    import numpy as np

    from keras_blood.config.loading import load_config
    from keras_blood.data import load_data

    overrides = [f"data.sources.{lab}.root={getattr(args, lab)}" for lab in LABS]
    overrides += [f"data.sources.{lab}.max_examples={args.max_examples}" for lab in ("kaggle", "bloodmnist")]
    config = load_config(REPO / "configs" / "wbc_labs.yaml", overrides)
    train = load_data(config.data, config.seed).splits["train"]
    print(f"| lab | class | images | {' | '.join(f'window at reach {reach:g}' for reach in args.reach)} |")
    print("|---|---|---|" + "---|" * len(args.reach))
    for source, lab in enumerate(config.data.used_sources):
        for index, name in enumerate(config.data.classes):
            rows = np.flatnonzero((train.source == source) & (train.labels == index))
            if len(rows):
                images = train.images[rows]
                medians = [f"{np.median(window_sides(images, config.data, reach)):.2f}" for reach in args.reach]
                print(f"| {lab} | {name} | {len(rows)} | {' | '.join(medians)} |", flush=True)


if __name__ == "__main__":
    main()
