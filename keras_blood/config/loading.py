"""Reading configs: a YAML file, ``--set`` overrides, validation, and one-line errors.

Every command takes ``--set key=value`` overrides with dotted keys (``--set
train.epochs=3 --set data.root=/data``); values are parsed as YAML, so ``3`` is an int,
``true`` a bool and ``[32, 64]`` a list. This module imports no TensorFlow, so a bad
config is reported in a fraction of a second, before anything heavy is loaded or written.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from keras_blood.config.schema import MODEL_CLASSES, Config, DataConfig
from keras_blood.errors import ConfigError


def parse_override(item: str) -> tuple[list[str], Any]:
    """``"train.epochs=3"`` -> ``(["train", "epochs"], 3)``."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip() or any(not part for part in key.strip().split(".")):
        raise ConfigError(
            f"--set {item!r}: expected KEY=VALUE with a dotted key, e.g. --set train.epochs=3"
        )
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {item!r}: the value is not valid YAML ({exc})") from None
    return key.strip().split("."), value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for item in overrides:
        path, value = parse_override(item)
        node = raw
        for i, part in enumerate(path[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                dotted = ".".join(path[: i + 1])
                raise ConfigError(f"--set {item!r}: {dotted} is {child!r}, not a section")
            node = child
        node[path[-1]] = value
    return raw


MAX_QUOTED = 200  # characters of a bad value an error quotes: a YAML alias bomb stays one short line


def quoted(value: Any) -> str:
    """``repr(value)``, cut to :data:`MAX_QUOTED` characters."""
    text = repr(value)
    return text if len(text) <= MAX_QUOTED else f"{text[: MAX_QUOTED - 3]}..."


def _section_class(loc: list[str], raw: dict[str, Any], root: type[BaseModel]) -> type[BaseModel] | None:
    """The config class that holds the key at ``loc`` (for listing the allowed keys)."""
    cls: type[BaseModel] | None = root
    for part in loc[:-1]:
        if cls is Config and part == "model":
            name = raw.get("model", {}).get("name") if isinstance(raw.get("model"), dict) else None
            cls = next((c for c in MODEL_CLASSES if name in c.model_fields["name"].annotation.__args__), None)
        else:
            field = cls.model_fields.get(part) if cls else None
            cls = field.annotation if field and isinstance(field.annotation, type) else None
        if cls is None or not issubclass(cls, BaseModel):
            return None
    return cls


def describe_error(err: dict[str, Any], raw: dict[str, Any], root: type[BaseModel] = Config, prefix: str = "") -> str:
    """One pydantic error as ``key = value: what is wrong``, the key dotted from ``prefix``
    (``sweep.`` for a sweep section) and the allowed keys listed for an unknown one. The
    one formatter of config errors, for experiment configs and sweep files alike."""
    loc = [str(p) for p in err["loc"]]
    # Discriminated unions put the tag in the location ("model.cnn.filters"); drop it.
    if len(loc) >= 2 and loc[0] == "model" and isinstance(raw.get("model"), dict):
        if loc[1] == str(raw["model"].get("name")):
            loc.pop(1)
    message = err["msg"].removeprefix("Value error, ")
    if not loc:  # a check across sections: its message names the keys
        return f"{prefix.rstrip('.')}: {message}" if prefix else message
    key = prefix + ".".join(loc)
    if err["type"] == "union_tag_invalid":
        return f"{key}.name = {quoted(err['ctx']['tag'])}: unknown model; allowed: {err['ctx']['expected_tags']}"
    if err["type"] == "extra_forbidden":
        section = _section_class(loc, raw, root)
        allowed = f"; allowed keys here: {', '.join(section.model_fields)}" if section else ""
        return f"{key}: unknown key (value {quoted(err['input'])}){allowed}"
    if err["type"] == "missing":
        return f"{key}: required key is missing"
    return f"{key} = {quoted(err['input'])}: {message}"


def _read_file(path: str | Path) -> dict[str, Any]:
    """A YAML config file as a dict, ``name`` defaulted to the file's stem."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist (see configs/ for examples)")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top level")
    raw.setdefault("name", path.stem)
    return raw


def read_raw(path: str | Path, overrides: list[str] | None = None) -> dict[str, Any]:
    """A YAML config file as a dict, ``name`` defaulted to the file's stem, overrides applied."""
    return apply_overrides(_read_file(path), list(overrides or []))


def _source(raw: dict[str, Any]) -> Any:
    """The data source a raw config names (``data.name``, defaulted)."""
    data = raw.get("data")
    return (data if isinstance(data, dict) else {}).get("name", DataConfig.model_fields["name"].default)


def with_output_name(raw: dict[str, Any], file_source: Any) -> dict[str, Any]:
    """Fill a missing ``output.name``: the config's name, plus ``-<data.name>`` when an
    override changed the file's data source, so that a model of other data never becomes
    a new version of the file's model (which serves other classes or another input)."""
    output = raw.setdefault("output", {})
    if isinstance(output, dict) and "name" not in output and isinstance(raw.get("name"), str):
        source = _source(raw)
        changed = source != file_source and isinstance(source, str)  # else data.name's own error
        output["name"] = f"{raw['name']}-{source}" if changed else raw["name"]
    return raw


def validate_config(raw: dict[str, Any], where: str) -> Config:
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(describe_error(e, raw) for e in exc.errors())
        raise ConfigError(f"{where}: {problems}") from None


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Read a YAML config, apply ``--set`` overrides and validate it.

    Raises :class:`ConfigError` with one message naming every bad key and value.
    """
    file = _read_file(path)
    raw = apply_overrides(copy.deepcopy(file), list(overrides or []))
    return validate_config(with_output_name(raw, _source(file)), str(path))


def save_config(config: Config, path: Path) -> None:
    path.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
