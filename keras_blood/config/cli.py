"""What every command shares: ``CONFIG [--set key=value ...]`` and clean failure.

A user's mistake (bad config, missing data) ends with one line on stderr and exit
status 2, never a traceback. A command whose inputs partly failed (predict on a folder
with a corrupt file) returns exit status 1 itself.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from keras_blood.config.deprecated import start_command
from keras_blood.errors import KerasBloodError

# TensorFlow's C++ info logs hide the messages that matter (a few start-up lines are
# printed regardless); users can still ask for them by setting the variable themselves.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def at_least_one(text: str) -> int:
    """An argparse ``type``: a whole number of 1 or more (a batch size, a pixel limit)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 (got {value})")
    return value


def add_batch_options(parser: argparse.ArgumentParser, unit: str, refused: str, max_pixels: int) -> None:
    """``--batch-size`` and ``--max-pixels``, as the commands that read files in batches take
    them; ``refused``: what happens to a file over the limit, ``max_pixels``: its default."""
    parser.add_argument("--batch-size", type=at_least_one, default=64, help=f"{unit} per model call (default: 64)")
    parser.add_argument(
        "--max-pixels",
        type=at_least_one,
        default=max_pixels,
        metavar="N",
        help=f"{refused} whose header says they have more pixels than this (default: {max_pixels:_}); "
        "decoding takes tens of bytes per pixel",
    )


def config_parser(prog: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("config", help="YAML experiment config, e.g. configs/dropout03.yaml")
    return add_overrides(parser)


def files_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """``VERSION PATH...``: a published version and the image files it is to look at."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("version", help="published version folder, e.g. saved_models/dropout03/1")
    parser.add_argument("paths", nargs="+", metavar="PATH", help="image files, folders (recursive) or globs")
    return parser


def add_overrides(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value with a dotted key (repeatable), e.g. --set train.epochs=3",
    )
    return parser


def run_main(main: Callable[[Sequence[str] | None], object], argv: Sequence[str] | None = None) -> int:
    """Run ``main``; an ``int`` it returns is the exit status, anything else means success."""
    start_command()
    try:
        result = main(argv)
    except KerasBloodError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return result if type(result) is int else 0
