"""Evaluate a published model version again, on a split of the data its config names.

    python -m keras_blood.evaluate saved_models/dropout03/1 [--split test] [--set data.root=DIR ...] \\
        [--output reports]
    python -m keras_blood.evaluate saved_models/dropout03/1 --data DIR   # another lab's images

``--data`` takes a folder of class folders or a .csv/.tsv list (as data.name image_folder
reads them): how the model does in a lab it never saw. Classes are matched by name and
data.class_aliases; the data's classes the model lacks are left out and counted, the
model's classes the data lacks are named, and the report adds balanced accuracy. A folder
of split folders (TRAIN/, TEST/) is pooled into one set, and a line says so. A file that
is not a readable image, or whose header says it has more than ``--max-pixels`` pixels
(default data.max_pixels), is an error naming it; ``--set data.skip_unreadable=true``
leaves such files out and counts them.

The report goes to a new folder, ``<output>/<name>-v<version>-<split>-<timestamp>/``
(:mod:`keras_blood.evaluation.evaluate_version` lists its files); the last line printed
is its path.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from keras_blood.config.cli import add_overrides, at_least_one, run_main
from keras_blood.config.deprecated import add_old_spelling
from keras_blood.config.loading import load_config
from keras_blood.config.paths import version_config_file


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m keras_blood.evaluate",
        description="Evaluate a published model version and write a report folder.",
    )
    parser.add_argument("version", help="published version folder, e.g. saved_models/dropout03/1")
    parser.add_argument("--split", default="test", help="data split to evaluate on (default: test)")
    parser.add_argument(
        "--data",
        type=Path,
        help="evaluate on these images instead: a folder of class folders, or a .csv/.tsv list of path,label",
    )
    parser.add_argument(
        "--max-pixels",
        type=at_least_one,
        metavar="N",
        help="with --data: refuse images whose header says they have more pixels than this "
        "(default: the version's data.max_pixels, 50_000_000); decoding takes tens of bytes per pixel",
    )
    output = parser.add_argument(
        "--output",
        type=Path,
        default=Path("reports"),
        metavar="DIR",
        help="folder under which a new report folder is created (default: reports)",
    )
    add_old_spelling(parser, output, "--output-dir")
    return add_overrides(parser)


def main(argv: Sequence[str] | None = None) -> Path:
    parser = build_parser()
    args = parser.parse_args(argv)
    # A split the source lacks, or data that is not there, is said before TensorFlow starts
    # (and prints its log lines): reading the data needs no TensorFlow until it is prepared.
    config = load_config(version_config_file(Path(args.version)), args.overrides)
    if args.data is not None:
        from keras_blood.data.lab_data import lab_listing

        listing = lab_listing(Path(args.version), args.data, config)

        from keras_blood.evaluation.evaluate_version import evaluate_files

        result = evaluate_files(
            args.version, args.data, args.overrides, args.output, listing=listing, max_pixels=args.max_pixels
        )
        print(result.report_dir)
        return result.report_dir
    config.data.check_split(args.split)
    from keras_blood.data import load_data

    data = load_data(config.data, config.seed)

    from keras_blood.evaluation.evaluate_version import evaluate

    result = evaluate(args.version, args.overrides, args.split, args.output, data=data)
    print(result.report_dir)
    return result.report_dir


if __name__ == "__main__":
    sys.exit(run_main(main))
