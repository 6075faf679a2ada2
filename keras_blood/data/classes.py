"""Class names as labs write them: matched ignoring case and ``_``/``-``/spaces, with
aliases (``data.class_aliases``) mapped onto the classes kept (``data.classes``)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from keras_blood.config.quote import quoted
from keras_blood.errors import ConfigError, DataError


def normal(name: str) -> str:
    """A class name as it is matched: case, and ``_``/``-``/space runs, ignored."""
    return re.sub(r"[\s_\-]+", " ", name.strip()).casefold()


def has_line_break(text: str) -> bool:
    """Whether ``text`` holds a line break (of any kind Python splits lines at)."""
    return "".join(text.splitlines()) != text


def check_class_name(name: str, where: str, fix: str) -> None:
    """A DataError unless ``name`` can be a class name: one line (a prepared copy keeps its
    class names a line each, so a line break would shift every name after it) of UTF-8."""
    if has_line_break(name):
        raise DataError(f"{where}: the class name {quoted(name)} holds a line break; {fix} (a class name is one line)")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise DataError(f"{where}: the class name {quoted(name)} is not UTF-8 text; {fix}") from None


class ClassNames:
    """Maps the class names found (folders, list labels) onto the classes kept.

    Names are stripped, as a prepared copy's class names are when read back. A spelling
    may stand for one class only: one listed under two classes, or naming another class
    of its own, is a DataError (a dictionary would keep the last of them silently)."""

    def __init__(self, classes: Sequence[str] | None, aliases: Mapping[str, Sequence[str]] | None):
        aliases = aliases or {}
        self.classes = [name.strip() for name in classes] if classes else None
        for name in [*(self.classes or []), *(aliases if self.classes is None else [])]:
            check_class_name(name, "data.classes" if self.classes else "data.class_aliases", "rename it")
        seen: dict[str, str] = {}
        for name in self.classes or []:
            if (other := seen.setdefault(normal(name), name)) != name:
                raise DataError(
                    f"data.classes: {quoted(other)} and {quoted(name)} are one class (names match ignoring case, "
                    "_, - and spaces); keep one"
                )
        # Each class's own name (data.classes, or an alias's key) -> the class it is.
        own: dict[str, str] = {}
        for name in [*(self.classes or []), *aliases]:
            own.setdefault(normal(name), self._target(name, own))
        self.lookup: dict[str, str] = {}
        listed_under: dict[str, str] = {}  # a spelling -> the key it was first listed under
        for key, spellings in aliases.items():
            target = own[normal(key)]
            for spelling in spellings:
                found = normal(spelling)
                if own.get(found, target) != target:
                    raise DataError(
                        f"data.class_aliases: {quoted(spelling)} is listed as a spelling of {quoted(key)} but names "
                        f"{quoted(own[found])}, a class of its own; take it out of the spellings of {quoted(key)}"
                    )
                first = listed_under.setdefault(found, key)
                if own[normal(first)] != target:
                    raise DataError(
                        f"data.class_aliases: {quoted(spelling)} is listed under both "
                        f"{quoted(first)} and {quoted(key)}; "
                        "keep it under the one class it names"
                    )
                self.lookup[found] = target
        self.lookup.update(own)

    def _target(self, name: str, own: Mapping[str, str]) -> str:
        if self.classes is None:
            return own.get(normal(name), name.strip())
        for kept in self.classes:
            if normal(kept) == normal(name):
                return kept
        raise DataError(
            f"data.class_aliases: {quoted(name)} is not one of data.classes {quoted(self.classes)}; "
            "key the aliases by a class of data.classes"
        )

    def __call__(self, found: str) -> str | None:
        """The class ``found`` is, or None where it is not kept."""
        if (match := self.lookup.get(normal(found))) is not None:
            return match
        return None if self.classes is not None else found.strip()

    def order(self, found: Sequence[str]) -> list[str]:
        """The class names, in order: data.classes, else those found (sorted, alike merged)."""
        if self.classes is not None:
            return list(self.classes)
        names: dict[str, str] = {}
        for name in sorted(name.strip() for name in found):
            names.setdefault(normal(name), name)
        return sorted(names.values(), key=str.casefold)


def match_classes(available: list[str], wanted: list[str]) -> list[str]:
    """The source's spelling of each name in ``wanted`` (matched ignoring case and the spaces
    around it), in ``wanted``'s order; a ConfigError names the unknown ones and lists the
    allowed ones."""
    # Stripped too: a prepared copy reads its class names back stripped.
    by_folded = {name.strip().casefold(): name for name in available}
    unknown = [name for name in wanted if name.strip().casefold() not in by_folded]
    if unknown:
        raise ConfigError(f"data.classes: unknown class(es) {unknown}; allowed: {available}")
    return [by_folded[name.strip().casefold()] for name in wanted]
