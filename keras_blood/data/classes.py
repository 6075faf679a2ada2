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


class ClassNames:
    """Maps the class names found (folders, list labels) onto the classes kept."""

    def __init__(self, classes: Sequence[str] | None, aliases: Mapping[str, Sequence[str]] | None):
        self.classes = list(classes) if classes else None
        self.lookup: dict[str, str] = {}
        for name, spellings in (aliases or {}).items():
            target = self._target(name)
            for spelling in [name, *spellings]:
                self.lookup[normal(spelling)] = target
        for name in self.classes or []:
            self.lookup[normal(name)] = name

    def _target(self, name: str) -> str:
        if self.classes is None:
            return name
        for kept in self.classes:
            if normal(kept) == normal(name):
                return kept
        raise DataError(
            f"data.class_aliases: {quoted(name)} is not one of data.classes {self.classes}; "
            "key the aliases by a class of data.classes"
        )

    def __call__(self, found: str) -> str | None:
        """The class ``found`` is, or None where it is not kept."""
        if (match := self.lookup.get(normal(found))) is not None:
            return match
        return None if self.classes is not None else found

    def order(self, found: Sequence[str]) -> list[str]:
        """The class names, in order: data.classes, else those found (sorted, alike merged)."""
        if self.classes is not None:
            return list(self.classes)
        names: dict[str, str] = {}
        for name in sorted(found):
            names.setdefault(normal(name), name)
        return sorted(names.values(), key=str.casefold)


def match_classes(available: list[str], wanted: list[str]) -> list[str]:
    """The source's spelling of each name in ``wanted`` (matched case-insensitively), in
    ``wanted``'s order; a ConfigError names the unknown ones and lists the allowed ones."""
    by_folded = {name.casefold(): name for name in available}
    unknown = [name for name in wanted if name.casefold() not in by_folded]
    if unknown:
        raise ConfigError(f"data.classes: unknown class(es) {unknown}; allowed: {available}")
    return [by_folded[name.casefold()] for name in wanted]
