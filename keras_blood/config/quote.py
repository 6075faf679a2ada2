"""Quoting a user's value in an error message: at most :data:`MAX_QUOTED` characters, and
never more work than that. A value read from YAML may be a list of lists shared many times
over through aliases, whose full ``repr`` is gigabytes; :func:`quoted` stops writing it
as soon as the message has enough.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

MAX_QUOTED = 200  # characters of a bad value an error quotes
MAX_PROBLEMS = 10  # problems one config error lists (the rest are counted)


def quoted(value: Any) -> str:
    """``repr(value)``, cut to :data:`MAX_QUOTED` characters (``...`` where cut). Lists,
    tuples and dicts are written piece by piece and only as far as shown."""
    pieces, length = [], 0
    for piece in _pieces(value):
        pieces.append(piece)
        length += len(piece)
        if length > MAX_QUOTED:
            break
    return _cut("".join(pieces))


def cut(text: str) -> str:
    """``text`` (a key, a path, a message) cut to :data:`MAX_QUOTED` characters."""
    return _cut(text)


def problems(errors: list, describe: Callable[[Any], str]) -> str:
    """``describe(error)`` for the first :data:`MAX_PROBLEMS` errors, joined with ``; ``,
    then how many more there are."""
    shown = "; ".join(describe(error) for error in errors[:MAX_PROBLEMS])
    rest = len(errors) - MAX_PROBLEMS
    return f"{shown}; and {rest} more" if rest > 0 else shown


def _cut(text: str) -> str:
    return text if len(text) <= MAX_QUOTED else f"{text[: MAX_QUOTED - 3]}..."


def _pieces(value: Any) -> Iterator[str]:
    kind = type(value)
    if kind is dict:
        yield "{"
        for i, (key, item) in enumerate(value.items()):
            yield ", " if i else ""
            yield from _pieces(key)
            yield ": "
            yield from _pieces(item)
        yield "}"
    elif kind in (list, tuple):
        yield "[" if kind is list else "("
        for i, item in enumerate(value):
            yield ", " if i else ""
            yield from _pieces(item)
        yield "]" if kind is list else ("," if len(value) == 1 else "") + ")"
    elif isinstance(value, str | bytes) and len(value) > MAX_QUOTED:
        yield repr(value[: MAX_QUOTED + 1])
    else:
        try:
            yield repr(value)
        except ValueError:  # an int beyond Python's 4300 digits for str()
            yield f"<{type(value).__name__}>"
