"""Run a study: every model of a sweep file on every input, and its results table.

    python -m keras_blood.sweep configs/georgetown.yaml [--set key=value ...]

Each cell (model x input) is one training run (:mod:`keras_blood.training.sweep` says what
the results folder holds and how an interrupted study continues). The last line printed is
the results folder; the exit status is 1 when a cell failed (the others still ran).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from keras_blood.config.cli import config_parser, run_main
from keras_blood.config.sweep import load_sweep


def build_parser() -> argparse.ArgumentParser:
    return config_parser(
        "python -m keras_blood.sweep",
        "Train every model of a sweep file on every input; write the results table.",
    )


def main(argv: Sequence[str] | None = None) -> Path | int:
    """The results folder, or exit status 1 when a cell failed (the rest still ran)."""
    args = build_parser().parse_args(argv)
    sweep = load_sweep(args.config, args.overrides)  # every cell validated before any runs
    argv = sys.argv[1:] if argv is None else list(argv)
    from keras_blood.training.sweep import run_sweep

    failed = run_sweep(sweep, command=shlex.join(["python", "-m", "keras_blood.sweep", *argv]))
    if failed:
        print(f"{len(failed)} cell(s) failed: {', '.join(failed)}", file=sys.stderr, flush=True)
    print(sweep.results_dir)
    return 1 if failed else sweep.results_dir


if __name__ == "__main__":
    sys.exit(run_main(main))
