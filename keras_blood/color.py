"""A figure of what colour extraction and the cell crop do to real samples.

    python -m keras_blood.color CONFIG [--set key=value ...] [--output FILE.png]

writes original / mask / cell crop (when data.cell_crop is on) / extracted for a few
training images of each class. The operations themselves are in
:mod:`keras_blood.preparation`; the figure in :mod:`keras_blood.evaluation.plots`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from keras_blood.config.cli import config_parser, run_main
from keras_blood.config.deprecated import add_old_spelling
from keras_blood.config.loading import load_config, read_raw
from keras_blood.config.sweep import load_sweep


def build_parser() -> argparse.ArgumentParser:
    parser = config_parser(
        "python -m keras_blood.color",
        "Write a PNG of real samples from the config's data: original / mask / [cell crop /] extracted.",
    )
    output = parser.add_argument(
        "--output",
        type=Path,
        default=Path("color_extraction.png"),
        metavar="PNG",
        help="PNG to write (default: color_extraction.png)",
    )
    add_old_spelling(parser, output, "--out")
    parser.add_argument("--per-class", type=int, default=3, help="samples per class")
    return parser


def main(argv: Sequence[str] | None = None) -> Path:
    parser = build_parser()
    args = parser.parse_args(argv)
    # Experiment and sweep files alike: only the data section matters here.
    if "sweep" in read_raw(args.config, args.overrides):
        config = load_sweep(args.config, args.overrides).cells[0].config
    else:
        config = load_config(args.config, args.overrides)

    from keras_blood.data import load_data
    from keras_blood.evaluation.plots import plot_color_extraction, sample_images

    data = load_data(config.data, config.seed)
    split = data.splits["train"]
    picks = sample_images(split.images, split.labels, args.per_class, config.seed)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    plot_color_extraction(split.images[picks], split.labels[picks], data.class_names, config.data, args.output)
    print(args.output)
    return args.output


if __name__ == "__main__":
    sys.exit(run_main(main))
