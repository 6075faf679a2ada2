"""Fit a published version to a lab's own unlabelled captures, and publish the result.

    python -m keras_blood.adapt saved_models/wbc_labs/1 --data our-lab/ [--set output.name=wbc_labs_ourlab]

``--data`` is any folder of the lab's images (searched recursively, class folders or not:
labels, if any, are not read), or files and globs. The version's batch-normalisation
statistics are re-estimated on them (AdaBN, :mod:`keras_blood.training.adapt`) and a new
version is published under the version's name (or ``output.name``); its
``assets.extra/adaptation.json`` names the source version and the folder. The last line
printed is the new version's folder.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from keras_blood.config.cli import add_overrides, at_least_one, run_main
from keras_blood.errors import KerasBloodError
from keras_blood.serving.request import check_request


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m keras_blood.adapt",
        description="Fit a published version to a lab's unlabelled images (AdaBN) and publish it as a new version.",
    )
    parser.add_argument("version", help="published version folder, e.g. saved_models/wbc_labs/1")
    parser.add_argument(
        "--data",
        required=True,
        nargs="+",
        metavar="PATH",
        help="the lab's images: a folder (searched recursively; labels not read), files or globs",
    )
    parser.add_argument("--batch-size", type=at_least_one, default=64, help="images a forward pass (default: 64)")
    return add_overrides(parser)


def main(argv: Sequence[str] | None = None) -> Path:
    parser = build_parser()
    args = parser.parse_args(argv)
    entries = check_request(args.version, args.data)  # a bad argument: one line, before TensorFlow starts
    if missing := [(path, why) for path, why in entries if why]:
        raise KerasBloodError(f"--data {missing[0][0]}: {missing[0][1]}")

    from keras_blood.training.adapt import adapt_version

    adapted = adapt_version(args.version, entries, args.data, args.overrides, args.batch_size)
    print(adapted)
    return adapted


if __name__ == "__main__":
    sys.exit(run_main(main))
