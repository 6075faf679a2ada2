"""Grad-CAM maps of a published model's predictions on image files.

    python -m keras_blood.explain saved_models/dropout03/1 cell.jpg scans/ [--output explanations]

Writes a new ``<output>/<name>-v<version>-<timestamp>/`` with one overlay per file,
``grid.png`` and ``explanations.csv``; the last line printed is that folder. The work is
:func:`keras_blood.evaluation.gradcam.explain_files`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from keras_blood.config.cli import files_parser, run_main
from keras_blood.config.deprecated import add_old_spelling
from keras_blood.serving.request import check_request


def build_parser() -> argparse.ArgumentParser:
    parser = files_parser(
        "python -m keras_blood.explain",
        "Grad-CAM maps of a published model's predictions on image files.",
    )
    output = parser.add_argument(
        "--output",
        type=Path,
        default=Path("explanations"),
        metavar="DIR",
        help="folder under which a new <name>-v<version>-<timestamp>/ is written (default: explanations)",
    )
    add_old_spelling(parser, output, "--out")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_request(args.version, args.paths)  # a bad argument: one line, before TensorFlow starts

    from keras_blood.evaluation.gradcam import explain_files

    folder, failed = explain_files(args.version, args.paths, args.output)
    print(folder)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(run_main(main))
