"""``--resume``: which run folder to continue, and whether it may continue on the data as
it is now.

``data_split.json`` records what the run trains on (:mod:`keras_blood.data.split_record`):
a lab's folder's files with each one's class and split, a published data set's files'
fingerprint. ``--resume`` on a folder whose split would be drawn otherwise is refused in
one line (:func:`check_resumed_data`), before the data is read.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from keras_blood.config.loading import load_config
from keras_blood.config.paths import STATUS
from keras_blood.config.schema import Config
from keras_blood.data.split_record import split_changes
from keras_blood.errors import ConfigError
from keras_blood.training.runs import DATA_SPLIT, RunError, RunFolder


def check_resumed_data(run: RunFolder, current: dict[str, Any]) -> None:
    """A RunError where the data ``current`` records (:func:`split_record` now) would not be
    split as when ``run`` started: resuming would train on files it validated and tested on
    before, and test on files it trained on. Files rewritten with the same split, or a
    published data set's files changed: a warning line, and the run goes on."""
    path = run.path / DATA_SPLIT
    if not path.is_file():
        print(
            f"warning: {run.path} has no {DATA_SPLIT} (a run of an earlier version): its data is taken "
            "as it is now, unchecked",
            file=sys.stderr,
            flush=True,
        )
        return
    try:
        recorded = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise RunError(
            f"{path} is unreadable ({exc}); this run cannot be checked against its data: start a new run"
        ) from None
    refusal, warnings = split_changes(recorded, current)
    for warning in warnings:
        print(warning, file=sys.stderr, flush=True)
    if refusal:
        raise RunError(
            f"{refusal}: resuming would draw its splits again. Start a new run (python -m keras_blood.train "
            f"{run.path / 'config.yaml'}), or put the folder back as it was and resume"
        )


def latest_unfinished(config: Config) -> RunFolder | None:
    """The newest run of ``config.name`` under ``output.runs_dir`` that did not finish."""
    parent = config.output.runs_dir / config.name
    if not parent.is_dir():
        return None
    for path in sorted((p for p in parent.iterdir() if (p / STATUS).is_file()), key=lambda p: p.name, reverse=True):
        run = RunFolder(path)
        if not run.finished:
            return run
    return None


def first_difference(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> str | None:
    """The first dotted key whose value differs between two config dicts."""
    for key in sorted(set(a) | set(b)):
        left, right = a.get(key), b.get(key)
        if isinstance(left, dict) and isinstance(right, dict):
            found = first_difference(left, right, f"{prefix}{key}.")
            if found:
                return found
        elif left != right:
            return f"{prefix}{key} ({left!r} in the run, {right!r} now)"
    return None


def resolve_resume(resume: str, config_path: str | None, overrides: list[str]) -> tuple[Config, RunFolder]:
    """``--resume RUN_DIR`` or ``--resume latest CONFIG``: the run to continue and its config."""
    if resume != "latest":
        if config_path or overrides:
            raise ConfigError(
                f"--resume {resume}: the run's own config.yaml is used; drop the CONFIG/--set "
                "arguments (or use --resume latest CONFIG to find the run from a config)"
            )
        run = RunFolder.open(Path(resume))
        return run.config, run
    if not config_path:
        raise ConfigError("--resume latest needs the CONFIG whose newest unfinished run to continue")
    config = load_config(config_path, overrides)
    run = latest_unfinished(config)
    if run is None:
        raise ConfigError(
            f"--resume latest: no unfinished run of {config.name!r} under {config.output.runs_dir / config.name}; "
            f"start one with: python -m keras_blood.train {config_path}"
        )
    difference = first_difference(run.config.to_dict(), config.to_dict())
    if difference:
        raise ConfigError(f"--resume latest: {run.path} was started with other settings: {difference}")
    return run.config, run
