"""Train, evaluate and export one experiment.

    python -m keras_blood.train configs/dropout03.yaml [--set train.epochs=3 ...]
    python -m keras_blood.train --resume runs/dropout03/20250101-120000
    python -m keras_blood.train --resume latest configs/dropout03.yaml [--set ...]

Writes a run folder (TensorBoard logs, CSV history, best checkpoint, test metrics and
plots) under ``output.runs_dir/<config name>/<timestamp>/`` and a SavedModel version
under ``output.export_dir/<output.name>/<version>/``. The last line printed is the path
of that version, or why none was published (``--no-export``, a smoke run ...). The work is
:func:`keras_blood.training.trainer.train`: a :class:`~keras_blood.training.task.Task` built
from the config, run by a :class:`~keras_blood.training.trainer.Trainer`.

The same command on every worker of a ``TF_CONFIG`` cluster trains data-parallel
(:mod:`keras_blood.training.distribute`); only the chief writes the run folder and exports.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from keras_blood.config.cli import add_overrides, run_main
from keras_blood.config.loading import load_config
from keras_blood.errors import ConfigError


def main(argv: Sequence[str] | None = None) -> Path | None:
    parser = argparse.ArgumentParser(prog="python -m keras_blood.train", description="Train, evaluate and export a model.")
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
            outcome = f"exported as {status['export']}" if status.get("export") else f"not published: {status.get('not_published')}"
            print(f"{run.path} finished already; {outcome}", flush=True)
            return Path(status["export"]) if status.get("export") else None

        from keras_blood.training.trainer import train

        result = train(config, resume=run.path)
    else:
        if not args.config:
            parser.error("give a CONFIG, or --resume RUN_DIR")
        config = load_config(args.config, args.overrides + ["output.publish=never"] * args.no_export)

        from keras_blood.training.trainer import train

        result = train(config)
    if result.export_dir is not None:
        print(result.export_dir)
    return result.export_dir


if __name__ == "__main__":
    sys.exit(run_main(main))
