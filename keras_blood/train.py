"""Train, evaluate and publish one experiment.

    python -m keras_blood.train configs/dropout03.yaml [--set train.epochs=3 ...]
    python -m keras_blood.train --resume runs/dropout03/20250101-120000
    python -m keras_blood.train --resume latest configs/dropout03.yaml [--set ...]

Writes a run folder (TensorBoard logs, CSV history, best checkpoint, test metrics and
plots) under ``output.runs_dir/<config name>/<timestamp>/`` and a SavedModel version
under ``output.publish_dir/<output.name>/<version>/``. The last line printed is the path
of that version, or why none was published (``--no-publish``, a smoke run ...); SIGTERM stops
it with one line saying how to continue (exit status 143). The work is
:func:`keras_blood.training.trainer.train`: a :class:`~keras_blood.training.task.Task` built
from the config, run by a :class:`~keras_blood.training.trainer.Trainer`.

The same command on every worker of a ``TF_CONFIG`` cluster trains data-parallel
(:mod:`keras_blood.training.distribute`); only the chief writes the run folder and publishes.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from keras_blood.config.cli import add_overrides, run_main
from keras_blood.config.deprecated import add_old_spelling
from keras_blood.config.loading import load_config
from keras_blood.errors import ConfigError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m keras_blood.train", description="Train, evaluate and publish a model."
    )
    parser.add_argument("config", nargs="?", help="YAML experiment config, e.g. configs/dropout03.yaml")
    no_publish = parser.add_argument(
        "--no-publish", action="store_true", help="publish no version (output.publish=never)"
    )
    add_old_spelling(parser, no_publish, "--no-export")
    parser.add_argument(
        "--resume",
        metavar="RUN_DIR|latest",
        help="continue a killed run from its last finished epoch: its folder, or `latest` "
        "(with CONFIG) for the config's newest unfinished run",
    )
    return add_overrides(parser)


def main(argv: Sequence[str] | None = None) -> Path | int | None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.resume:
        if args.no_publish:
            raise ConfigError("--no-publish with --resume: a run keeps the publishing settings it started with")
        from keras_blood.training.resume import resolve_resume

        config, run = resolve_resume(args.resume, args.config, args.overrides)
        if run.finished:
            status = run.status()
            outcome = (
                f"published as {status['export']}"
                if status.get("export")
                else f"not published: {status.get('not_published')}"
            )
            print(f"{run.path} finished already; {outcome}", flush=True)
            return Path(status["export"]) if status.get("export") else None

        resume = run.path
    else:
        if not args.config:
            parser.error("give a CONFIG, or --resume RUN_DIR")
        config = load_config(args.config, args.overrides + ["output.publish=never"] * args.no_publish)
        resume = None

    from keras_blood.data.sources.image_folder.listing import source_listing

    source_listing(config.data, config.seed)  # a lab's folder that cannot be used: one line, before TensorFlow
    if not os.environ.get("TF_CONFIG"):  # (in a cluster only the chief writes; train() knows which)
        from keras_blood.training.runs import check_run_target

        check_run_target(config, resume)  # a read-only folder fails in a second, before TensorFlow starts

    from keras_blood.training.signals import Stopped
    from keras_blood.training.trainer import train

    try:
        result = train(config, resume=resume)
    except Stopped as stop:  # SIGTERM: one line, the shell's status for it
        then = (
            f"continue with: python -m keras_blood.train --resume {stop.run}" if stop.run else "no run folder was made"
        )
        print(f"stopped by {stop.signal_name}; {then}", file=sys.stderr, flush=True)
        return 128 + int(signal.SIGTERM)
    if result.export_dir is not None:
        print(result.export_dir)
    return result.export_dir


if __name__ == "__main__":
    sys.exit(run_main(main))
