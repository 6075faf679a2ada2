"""A differential count: find every white cell in smear fields, classify it with a published
model version, and count each sample.

    python -m keras_blood.count saved_models/wbc_labs/1 smears/patient1 smears/patient2 \\
        [--sample-pattern REGEX] [--output DIR [--overwrite]] [--count-edge-cells]

A folder is a sample (``--sample-pattern`` names samples from the paths instead). The
folder written (default: a new counts/<name>-v<version>-<timestamp>/) holds ``cells.csv``,
``samples.csv`` (per-class counts and percentages with 95% Wilson intervals), the fields
annotated, a figure per sample and ``review/<class>/`` crops, the least certain first, to
correct and train on (:mod:`keras_blood.evaluation.count_report`). A field that cannot be
read, or has more than ``--max-pixels`` pixels, is one line and exit status 2, and nothing
is written. The last line printed is the folder's path. Guide: docs/counting.md.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from keras_blood.config.cli import add_batch_options, files_parser, run_main
from keras_blood.preparation.limits import MAX_PIXELS  # no TensorFlow: an argument is checked at once
from keras_blood.serving.count_request import CELL_FRACTION, check_count_request


def build_parser() -> argparse.ArgumentParser:
    parser = files_parser(
        "python -m keras_blood.count",
        "Find and classify every white cell in smear fields; count each sample (a folder, or --sample-pattern).",
    )
    parser.add_argument(
        "--output",
        type=Path,
        help="folder to write (default: a new counts/<name>-v<version>-<timestamp>/); refused if it holds files",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace the --output folder if it holds files")
    parser.add_argument(
        "--sample-pattern",
        metavar="REGEX",
        help="name each field's sample by the first (group) of this regular expression, searched in its path "
        "(default: the folder named on the command line, or the folder a file is in)",
    )
    parser.add_argument(
        "--count-edge-cells",
        action="store_true",
        help="count the cells cut by a field's edge too (default: left out of the counts, kept in cells.csv)",
    )
    parser.add_argument(
        "--cell-fraction",
        type=float,
        default=CELL_FRACTION,
        metavar="F",
        help=f"the cell's box over the shorter side of the window cut around it, as in the captures the model "
        f"was trained on (default: {CELL_FRACTION})",
    )
    add_batch_options(parser, "cells", "refuse fields", MAX_PIXELS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not 0.0 < args.cell_fraction <= 1.0:
        parser.error("--cell-fraction must be in (0, 1]")
    # One line for a bad argument, before TensorFlow starts.
    fields = check_count_request(args.version, args.paths, args.output, args.overwrite, args.sample_pattern)

    from keras_blood.evaluation.count_report import write_count

    output = write_count(
        args.version,
        fields,
        args.output,
        overwrite=args.overwrite,
        batch_size=args.batch_size,
        max_pixels=args.max_pixels,
        count_edge_cells=args.count_edge_cells,
        cell_fraction=args.cell_fraction,
    )
    print(output)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
