"""Generate the reference pages at build time (mkdocs-gen-files runs this script).

- reference/config.md: every config key, from the pydantic models in
  keras_blood/config/schema.py (types, defaults, constraints and Field descriptions);
- reference/cli.md: every command's ``--help``, from its own argparse parser.

Nothing here is written by hand, so neither page can drift from the code. Neither part
imports TensorFlow: keras_blood.config does not, and the commands parse their arguments
before they import anything heavy. tests/commands/test_docs.py imports this file to check that
every key has a description.
"""

from __future__ import annotations

import contextlib
import enum
import importlib
import inspect
import io
import os
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

import annotated_types
import mkdocs_gen_files
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from keras_blood.config import schema
from keras_blood.config.presets import GEORGETOWN_PRESETS
from keras_blood.config.sweep import SweepSpec

COMMANDS = ("train", "evaluate", "adapt", "predict", "count", "explain", "export_edge", "sweep", "launch", "color")
NO_DESCRIPTION = ""

# ------------------------------------------------------------------------- config keys


def _no_tags(text: str) -> str:
    """``<name>`` outside code spans as text, not as an HTML tag the browser would hide."""
    parts = text.split("`")
    parts[::2] = [re.sub(r"<(?=[A-Za-z/$])", "&lt;", part) for part in parts[::2]]
    return "`".join(parts)


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return _no_tags(" ".join(str(text).split()).replace("|", "\\|"))


def _code(value: Any) -> str:
    return "`" + str(value).replace("`", "'") + "`"


def _yaml(value: Any) -> str:
    """A default as a YAML value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, enum.Enum):
        return str(value.value)
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(_yaml(v) for v in value) + "]"
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _constraints(metadata: list[Any]) -> list[str]:
    out = []
    for item in metadata:
        for cls, symbol in (
            (annotated_types.Gt, ">"),
            (annotated_types.Ge, ">="),
            (annotated_types.Lt, "<"),
            (annotated_types.Le, "<="),
        ):
            if isinstance(item, cls):
                out.append(f"{symbol} {_yaml(getattr(item, cls.__name__.lower()))}")
        if isinstance(item, annotated_types.MinLen):
            out.append(f"at least {item.min_length}")
        if isinstance(item, annotated_types.MaxLen):
            out.append(f"at most {item.max_length}")
        if isinstance(getattr(item, "func", None), types.FunctionType):  # AfterValidator
            doc = item.func.__name__.strip("_").replace("_", " ")
            out.append(doc)
    return out


def _type(annotation: Any) -> str:
    """A readable type: YAML words, not Python's."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        base, *metadata = args
        flat = [m for item in metadata for m in (getattr(item, "metadata", None) or [item])]
        limits = _constraints(flat)
        return _type(base) + (f" ({', '.join(limits)})" if limits else "")
    if origin is Literal:
        return " \\| ".join(_code(_yaml(a)) for a in args)
    if origin in (Union, types.UnionType):
        parts = [a for a in args if a is not type(None)]
        if len(parts) > 1 and all(inspect.isclass(a) and issubclass(a, BaseModel) for a in parts):
            return "a `model` section"
        text = " or ".join(_type(a) for a in parts)
        return text + (" or `null`" if len(parts) < len(args) else "")
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"list of {_type(args[0])}"
        return "[" + ", ".join(_type(a) for a in args) + "]"
    if origin is list:
        return f"list of {_type(args[0])}"
    if origin is dict:
        return f"mapping {_type(args[0])} -> {_type(args[1])}"
    if inspect.isclass(annotation) and issubclass(annotation, BaseModel):
        return "section"
    if annotation is Path:
        return "path"
    if annotation is bool:
        return "bool"
    if annotation in (int, float, str):
        return annotation.__name__
    return _code(getattr(annotation, "__name__", annotation))


def _default(model: type[BaseModel], name: str, field: Any) -> str:
    if model is schema.DataConfig and name == "image_size":
        return "per source: " + "; ".join(f"{k} {_code(_yaml(v))}" for k, v in schema.DEFAULT_IMAGE_SIZE.items())
    if model is schema.DataConfig and name == "cell_crop":
        return "per source: " + "; ".join(
            f"{k} " + ("`null`" if v is None else "on (the keys below)") for k, v in schema.DEFAULT_CELL_CROP.items()
        )
    if field.default is PydanticUndefined:
        return "required" if field.default_factory is None else _code(_yaml(field.default_factory()))
    if isinstance(field.default, BaseModel):
        return "(the section below)"
    return _code(_yaml(field.default))


def _doc(model: type[BaseModel]) -> str:
    doc = inspect.getdoc(model) or ""
    own = model.__doc__ and "__doc__" in model.__dict__
    return doc if own else ""


def _rst_to_md(text: str) -> str:
    """The docstrings' reST literals (``x``) and roles (:class:`x`) as Markdown code."""
    text = re.sub(r":[a-z]+:`~?([^`]+)`", r"`\1`", text)
    return text.replace("``", "`")


def _table(model: type[BaseModel], prefix: str, skip: tuple[str, ...] = ()) -> list[str]:
    # In a div of its own (md_in_html), so that the stylesheet keeps the keys on one line.
    rows = ['<div class="config-keys" markdown>', "", "| key | type | default | meaning |", "|---|---|---|---|"]
    for name, field in model.model_fields.items():
        if name in skip:
            continue
        annotation = field.rebuild_annotation()
        rows.append(
            f"| {_code(prefix + name)} | {_type(annotation)} | {_default(model, name, field)} | "
            f"{_cell(_rst_to_md(field.description or NO_DESCRIPTION))} |"
        )
    return rows + ["", "</div>"]


def _section(title: str, model: type[BaseModel], prefix: str, skip: tuple[str, ...] = ()) -> list[str]:
    lines = [f"## {title}", ""]
    doc = _doc(model)
    if doc:
        lines += [_no_tags(_rst_to_md(doc)), ""]
    lines += _table(model, prefix, skip) + [""]
    return lines


def config_reference() -> str:
    lines = [
        "# Config reference",
        "",
        "Generated from `keras_blood/config/schema.py` when the site is built: every key a "
        "config file (or `--set`) takes, its type, default and meaning as the code declares "
        "them. An unknown key, a wrong type or a value outside the range shown stops a "
        "command before anything runs, with exit status 2 and one line naming the key. "
        "[Configs](../configs.md) explains the files and the keys used most.",
        "",
    ]
    config = schema.Config
    lines += _section("Top level", config, "", skip=("data", "model", "augment", "train", "eval", "output"))
    lines += _section("data", schema.DataConfig, "data.", skip=())
    lines += _section("data.color", schema.ColorConfig, "data.color.")
    lines += _section("data.cell_crop", schema.CellCropConfig, "data.cell_crop.")
    lines += _section("data.sources.<name>", schema.SourceConfig, "data.sources.<name>.")
    lines += [
        "## model",
        "",
        "`model.name` picks the family; each family takes the keys of its table. "
        "The keys every family takes come first.",
        "",
    ]
    common = schema._ModelParams
    lines += ["### Every family", ""] + _table(common, "model.", skip=("name",)) + [""]
    for cls in schema.MODEL_CLASSES:
        names = typing.get_args(cls.model_fields["name"].annotation)
        title = ", ".join(_code(n) for n in names)
        lines += [f"### {title}", ""]
        doc = _doc(cls)
        if doc:
            lines += [_no_tags(_rst_to_md(doc)), ""]
        if cls is schema.GeorgetownConfig:
            lines += [
                "Presets (what each name sets over the defaults below):",
                "",
                "| `model.name` | sets |",
                "|---|---|",
            ]
            for preset, values in GEORGETOWN_PRESETS.items():
                sets = ", ".join(f"`{k}: {_yaml(v)}`" for k, v in values.items()) or "nothing (the defaults)"
                lines.append(f"| `{preset}` | {sets} |")
            lines.append("")
        declared = cls.__dict__.get("__annotations__", {})  # the family's own keys (and overrides)
        lines += _table(cls, "model.", skip=tuple(n for n in cls.model_fields if n == "name" or n not in declared))
        lines.append("")
    lines += _section("augment", schema.AugmentConfig, "augment.")
    lines += _section("train", schema.TrainConfig, "train.")
    lines += _section("eval", schema.EvalConfig, "eval.")
    lines += _section("output", schema.OutputConfig, "output.")
    lines += (
        [
            "## sweep",
            "",
            "Only in a sweep file (`python -m keras_blood.sweep`): an experiment config without "
            "`model`, plus this section. Each cell (model x input) is a full config as above.",
            "",
        ]
        + _table(SweepSpec, "sweep.")
        + [""]
    )
    return "\n".join(lines)


# ------------------------------------------------------------------------- commands


def command_help(command: str) -> str:
    """``python -m keras_blood.<command> --help``, from the command's own parser."""
    module = importlib.import_module(f"keras_blood.{command}")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            module.main(["--help"])
        except SystemExit as exit_:
            if exit_.code not in (0, None):
                raise RuntimeError(f"{command} --help exited with {exit_.code}") from None
    text = out.getvalue().strip()
    if not text.startswith("usage:"):
        raise RuntimeError(f"{command} --help printed no usage")
    return text


def cli_reference() -> str:
    lines = [
        "# Command reference",
        "",
        "Generated when the site is built, from each command's own argument parser: what "
        "`python -m keras_blood.<command> --help` prints. Every command ends a mistake a user "
        "can fix (a bad config, missing data, a folder that is not a version) with one line "
        "and exit status 2.",
        "",
    ]
    for command in COMMANDS:
        lines += [f"## {command}", "", "```text", command_help(command), "```", ""]
    return "\n".join(lines)


if __name__ in ("<run_path>", "__main__"):  # run by mkdocs-gen-files (runpy), not imported by a test
    os.environ["COLUMNS"] = "100"  # argparse wraps its help to the terminal's width
    with mkdocs_gen_files.open("reference/config.md", "w") as file:
        file.write(config_reference())
    with mkdocs_gen_files.open("reference/cli.md", "w") as file:
        file.write(cli_reference())
