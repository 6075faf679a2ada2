"""Convert a published version for edge runtimes: LiteRT (``.tflite``) and ONNX (``.onnx``).

    python -m keras_blood.export_edge saved_models/dropout03/1 --format litert [--quantize int8] [--set data.root=DIR]
    python -m keras_blood.export_edge saved_models/dropout03/1 --format onnx

The files go into ``<version>/edge/`` (:mod:`keras_blood.serving.edge` says what each is
and how it is checked); the last line printed is the file's path.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from keras_blood.config.cli import add_overrides, run_main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m keras_blood.export_edge",
        description="Write a LiteRT or ONNX copy of a published version into <version>/edge/.",
    )
    parser.add_argument("version", help="published version folder, e.g. saved_models/dropout03/1")
    parser.add_argument("--format", required=True, metavar="litert|onnx", help="litert (.tflite) or onnx (.onnx)")
    parser.add_argument("--quantize", metavar="int8", help="LiteRT only: full-integer int8 network")
    parser.add_argument(
        "--representative",
        type=int,
        metavar="N",
        help="int8: calibration images drawn from the training split (default 256)",
    )
    return add_overrides(parser)


def main(argv: Sequence[str] | None = None) -> Path:
    args = build_parser().parse_args(argv)
    from keras_blood.serving.edge import export_edge

    path = export_edge(args.version, args.format, args.quantize, args.overrides, args.representative)
    print(path)
    return path


if __name__ == "__main__":
    sys.exit(run_main(main))
