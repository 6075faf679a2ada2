"""Train, evaluate and export one experiment.

    python -m keras_blood.train configs/dropout03.yaml [--set train.epochs=3 ...]
    python -m keras_blood.train --resume runs/dropout03/20250101-120000
    python -m keras_blood.train --resume latest configs/dropout03.yaml [--set ...]

Writes a run folder (TensorBoard logs, CSV history, best checkpoint, test metrics and
plots) under ``output.runs_dir/<config name>/<timestamp>/`` and a SavedModel version
under ``output.export_dir/<output.name>/<version>/``. The last line printed is the path
of that version, or why none was published (``--no-export``, a smoke run ...); SIGTERM stops
it with one line saying how to continue (exit status 143). The work is
:func:`keras_blood.training.trainer.train`: a :class:`~keras_blood.training.task.Task` built
from the config, run by a :class:`~keras_blood.training.trainer.Trainer`.

The same command on every worker of a ``TF_CONFIG`` cluster trains data-parallel
(:mod:`keras_blood.training.distribute`); only the chief writes the run folder and exports.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from keras_blood.config.cli import add_overrides, run_main
from keras_blood.config.loading import load_config
from keras_blood.errors import ConfigError


def main(argv: Sequence[str] | None = None) -> Path | int | None:
    parser = argparse.ArgumentParser(
        prog="python -m keras_blood.train", description="Train, evaluate and export a model."
    )
    parser.add_argument("config", nargs="?", help="YAML experiment config, e.g. configs/dropout03.yaml")
    parser.add_argument("--no-export", action="store_true", help="publish no version (output.publish=never)")
    parser.add_argument(
        "--resume",
        metavar="RUN_DIR|latest",
        help="continue a killed run from its last finished epoch: its folder, or `latest` "
        "(with CONFIG) for the config's newest unfinished run",
    )
    add_overrides(parser)
    args = parser.parse_args(argv)
    if args.resume:
        if args.no_export:
            raise ConfigError("--no-export with --resume: a run keeps the publishing settings it started with")
        from keras_blood.training.runs import resolve_resume

        config, run = resolve_resume(args.resume, args.config, args.overrides)
        if run.finished:
            status = run.status()
            outcome = (
                f"exported as {status['export']}"
                if status.get("export")
                else f"not published: {status.get('not_published')}"
            )
            print(f"{run.path} finished already; {outcome}", flush=True)
            return Path(status["export"]) if status.get("export") else None

        resume = run.path
    else:
        if not args.config:
            parser.error("give a CONFIG, or --resume RUN_DIR")
        config = load_config(args.config, args.overrides + ["output.publish=never"] * args.no_export)
        resume = None

    from keras_blood.data.sources.image_folder.listing import source_listing

    source_listing(config.data, config.seed)  # a lab's folder that cannot be used: one line, before TensorFlow
    if not os.environ.get("TF_CONFIG"):  # (in a cluster only the chief writes; train() knows which)
        from keras_blood.training.runs import check_run_target

        check_run_target(config, resume)  # a read-only folder fails in a second, before TensorFlow starts

    from keras_blood.training.trainer import Stopped, train

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
