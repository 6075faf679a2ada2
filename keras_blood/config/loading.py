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

from keras_blood.config.deprecated import RENAMED_KEYS, warn_deprecated
from keras_blood.config.paths import EXTRA, STATUS
from keras_blood.config.quote import cut, problems, quoted
from keras_blood.config.schema import MODEL_CLASSES, Config, DataConfig
from keras_blood.errors import ConfigError

MAX_CONFIG_BYTES = 1 << 20  # a config file is a few KB; a larger file is not one
# Values (scalars, lists and mappings) a YAML document may hold, counting each alias (*name)
# as a copy of its anchor: a config has a few hundred, and a few lines of nested aliases
# (a "billion laughs") expand to billions, which every later step would walk.
MAX_YAML_NODES = 100_000
MERGE_TAG = "tag:yaml.org,2002:merge"


class _Refused(yaml.YAMLError):
    """YAML that parses but is not taken as a config (a duplicate key, too many values)."""


class ConfigLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping (plain YAML keeps
    the last silently; a second ``train:`` block would replace the first). A key set again
    beside a merge (``<<: *base``) overrides the merged one, as YAML means it to."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, yaml.Node] = {}
            for key_node, _ in node.value:
                if key_node.tag == MERGE_TAG:
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.setdefault(key, key_node)
                except TypeError:  # an unhashable key: the constructor says so
                    continue
                if first is not key_node:
                    raise _Refused(
                        f"line {key_node.start_mark.line + 1}: key {quoted(key)} is given twice in one "
                        f"mapping (first on line {first.start_mark.line + 1}); keep one"
                    )
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str, where: str) -> Any:
    """``text`` as YAML (safe: plain data only), or a one-line ConfigError that starts with
    ``where``. Refuses a key given twice in a mapping, a document of more than
    :data:`MAX_YAML_NODES` values once aliases are expanded, and an alias inside its own
    anchor; these are checked on the parsed nodes, before any value is built."""
    loader = ConfigLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_expanded_size(node)
        return loader.construct_document(node)
    except _Refused as exc:
        raise ConfigError(f"{where}: {exc}") from None
    except yaml.MarkedYAMLError as exc:
        raise ConfigError(f"{where}: not valid YAML: {_one_line(exc)}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: not valid YAML: {cut(' '.join(str(exc).split()))}") from None
    except ValueError as exc:  # an int of more than 4300 digits, a bad date
        why = "an integer of more digits than Python reads" if "integer string conversion" in str(exc) else str(exc)
        raise ConfigError(f"{where}: not valid YAML: {cut(' '.join(why.split()))}") from None
    except RecursionError:
        raise ConfigError(f"{where}: not valid YAML: nested too deeply") from None
    finally:
        loader.dispose()


def _one_line(exc: yaml.MarkedYAMLError) -> str:
    where = f"line {exc.problem_mark.line + 1}, column {exc.problem_mark.column + 1}: " if exc.problem_mark else ""
    context = ""
    if exc.context:
        mark = exc.context_mark
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark and mark != exc.problem_mark else ""
        context = f" ({exc.context}{at})"
    return cut(f"{where}{exc.problem or ''}{context}")


def _check_expanded_size(root: yaml.Node) -> None:
    """Refuse a node graph of more than MAX_YAML_NODES values with aliases expanded, or
    with a cycle; linear in the distinct nodes (each one's expanded size is kept)."""
    size: dict[int, int] = {}
    open_nodes: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if isinstance(node, yaml.ScalarNode):
            size[key] = 1
            continue
        children = [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else node.value
        if children_done:
            open_nodes.discard(key)
            size[key] = 1 + sum(size[id(child)] for child in children)
            if size[key] > MAX_YAML_NODES:
                what = "the document" if node is root else f"the value on line {node.start_mark.line + 1}"
                raise _Refused(
                    f"{what} expands to more than {MAX_YAML_NODES} values through aliases (*name) or "
                    "otherwise; a config needs far fewer"
                )
            continue
        if key in size:
            continue
        if key in open_nodes:
            raise _Refused(f"line {node.start_mark.line + 1}: an alias (*name) inside its own anchor (&name)")
        open_nodes.add(key)
        stack.append((node, True))
        stack.extend((child, False) for child in children if id(child) not in size)


def parse_override(item: str) -> tuple[list[str], Any]:
    """``"train.epochs=3"`` -> ``(["train", "epochs"], 3)``."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip() or any(not part for part in key.strip().split(".")):
        raise ConfigError(f"--set {quoted(item)}: expected KEY=VALUE with a dotted key, e.g. --set train.epochs=3")
    value = load_yaml(raw, f"--set {quoted(item)}: the value") if raw.strip() else ""
    key = key.strip()
    for old, new in RENAMED_KEYS.items():
        if key == old or key.startswith(old + "."):
            warn_deprecated(f"--set {old}", f"--set {new}")
            key = new + key.removeprefix(old)
    return key.split("."), value


def rename_keys(raw: dict[str, Any], where: str, warn: bool = True) -> dict[str, Any]:
    """``raw`` with each key of :data:`RENAMED_KEYS` under its new name, a warning naming
    the old and the new key for each one met (unless ``warn`` is false). Both spellings
    at once is a ConfigError: which one was meant is not known."""
    for old, new in RENAMED_KEYS.items():
        *path, old_leaf = old.split(".")
        new_leaf = new.rpartition(".")[2]  # a key renamed within its section
        section = raw
        for part in path:
            section = section.get(part) if isinstance(section, dict) else None
        if not isinstance(section, dict) or old_leaf not in section:
            continue
        if new_leaf in section:
            raise ConfigError(f"{where}: {old} and {new} are one key ({old} its old spelling); keep {new}")
        if warn:
            warn_deprecated(f"{old} (in {where})", new)
        section[new_leaf] = section.pop(old_leaf)
    return raw


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for item in overrides:
        path, value = parse_override(item)
        node = raw
        for i, part in enumerate(path[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                dotted = ".".join(path[: i + 1])
                raise ConfigError(f"--set {quoted(item)}: {cut(dotted)} is {quoted(child)}, not a section")
            node = child
        node[path[-1]] = value
    return raw


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
    key = cut(prefix + ".".join(loc))
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
    try:
        if not path.is_file():
            raise ConfigError(f"config file {quoted(str(path))} does not exist (see configs/ for examples)")
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise ConfigError(f"{path}: {path.stat().st_size} bytes; a config file is at most {MAX_CONFIG_BYTES}")
        text = path.read_text(encoding="utf-8")
    except OSError as exc:  # unreadable, or a name too long to look up
        raise ConfigError(f"config file {quoted(str(path))}: cannot read it ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file (a config is UTF-8 YAML)") from None
    raw = load_yaml(text, str(path)) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top level")
    raw.setdefault("name", path.stem)
    # A config that a run or a version recorded was written by an earlier keras-blood, not
    # by the user: its old spellings are taken as they are, without a warning to act on.
    recorded = path.parent.name == EXTRA or (path.parent / STATUS).is_file()
    return rename_keys(raw, str(path), warn=not recorded)


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
        raise ConfigError(f"{where}: {problems(exc.errors(), lambda e: describe_error(e, raw))}") from None


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Read a YAML config, apply ``--set`` overrides and validate it.

    Raises :class:`ConfigError` with one message naming every bad key and value.
    """
    file = _read_file(path)
    raw = apply_overrides(copy.deepcopy(file), list(overrides or []))
    return validate_config(with_output_name(raw, _source(file)), str(path))


def save_config(config: Config, path: Path) -> None:
    path.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
