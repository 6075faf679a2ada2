"""Classify image files with a published model version.

    python -m keras_blood.predict saved_models/dropout03/1 cell.jpg scans/ "more/**/*.tif" \\
        [--output out.csv [--overwrite]]

Writes one CSV row per file (label, probability, every class's probability, or why the
file could not be read) and prints a table; the last line printed is the CSV's path. An
image of more than ``--max-pixels`` pixels (default 50 million, read from its header) is
not decoded; its row says why. The work is :func:`keras_blood.serving.predict.predict`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from keras_blood.config.cli import add_batch_options, files_parser, run_main
from keras_blood.preparation.limits import MAX_PIXELS  # no TensorFlow: an argument is checked at once
from keras_blood.serving.request import check_request


def build_parser() -> argparse.ArgumentParser:
    parser = files_parser(
        "python -m keras_blood.predict",
        "Classify image files (JPEG, PNG, TIFF, BMP, GIF; any size) with a published model.",
    )
    parser.add_argument(
        "--output",
        type=Path,
        metavar="CSV",
        help="CSV to write (default: a new predictions/<name>-v<version>-<timestamp>.csv)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace the --output file if it exists")
    add_batch_options(parser, "images", "skip, with an error row, images", MAX_PIXELS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_request(args.version, args.paths, args.output, args.overwrite)  # one line, before TensorFlow starts

    from keras_blood.serving.predict import predict

    output, failed = predict(
        args.version, args.paths, args.output, args.batch_size, overwrite=args.overwrite, max_pixels=args.max_pixels
    )
    print(output)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(run_main(main))
