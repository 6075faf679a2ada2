"""Old spellings of options and config keys: each still works, and says once, in one line
on stderr, that it is deprecated and what replaces it.

A command-line option renamed keeps its old spelling through :func:`add_old_spelling`
(``warning: --out is deprecated; use --output``); a config key renamed is listed in
:data:`RENAMED_KEYS`, which :mod:`keras_blood.config.loading` applies to config files and
``--set`` alike.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

# Old dotted config key -> new one, in the same section. "Publish" is the one word for
# making a served version.
RENAMED_KEYS = {"output.export_dir": "output.publish_dir"}

# The warnings said since the command started: a command may read its config twice.
_said: set[str] = set()


def warn_deprecated(old: str, new: str) -> None:
    """``warning: OLD is deprecated; use NEW`` on stderr, once a command."""
    line = f"warning: {old} is deprecated; use {new}"
    if line not in _said:
        _said.add(line)
        print(line, file=sys.stderr, flush=True)


def start_command() -> None:
    """Forget the warnings said: a new command (or a test's) says each one again."""
    _said.clear()


class _OldSpelling(argparse.Action):
    """An option's old spelling: warns, then does exactly what the new spelling's action does."""

    def __init__(self, option_strings: list[str], dest: str, target: argparse.Action, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, **kwargs)
        self.target = target

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        warn_deprecated(option_string or self.option_strings[0], self.target.option_strings[0])
        self.target(parser, namespace, values, option_string)


def add_old_spelling(parser: argparse.ArgumentParser, action: argparse.Action, old: str) -> None:
    """Accept ``old`` as a deprecated spelling of ``action``'s option (what ``add_argument``
    returned): the same value, type and destination, left out of ``--help``."""
    parser.add_argument(
        old,
        dest=action.dest,
        action=_OldSpelling,
        target=action,
        nargs=action.nargs,
        type=action.type,
        metavar=action.metavar,
        default=argparse.SUPPRESS,
        help=argparse.SUPPRESS,
    )
