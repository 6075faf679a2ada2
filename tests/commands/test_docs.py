"""The docs against the code: every command line they show parses with that command's own
parser, every config key they name exists in the schema, every file they name exists, and
every config key has a description in the generated reference.

Each check reads README.md and docs/**/*.md as they are; a doc that shows a made-up flag
(``--made-up``), a made-up key (``--set train.made_up=1``) or a file that is gone fails
with the file and line that says it.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import importlib.util
import re
import shlex
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from keras_blood.config.deprecated import RENAMED_KEYS
from keras_blood.config.schema import Config
from keras_blood.config.sweep import SweepSpec
from tests.helpers import REPO

DOCS = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
COMMAND = re.compile(r"python -m keras_blood\.([a-z_]+)\b")
# A value written as a placeholder (VERSION, DIR, N, <version>) stands for any value of its type.
PLACEHOLDER = re.compile(r"^[A-Z][A-Z0-9_]*$|<[^>]*>")
SECTIONS = ("data", "model", "augment", "train", "eval", "output", "sweep")
# A dotted name in backticks that a reader takes for a config key: a section, then keys.
# (model.keras, model.summary() and the like are files and calls, not keys.)
CONFIG_KEY = re.compile(rf"^(?:{'|'.join(SECTIONS)})(?:\.[a-z_<>][a-z0-9_<>]*)+(?=$|[=:\s])")
NOT_KEYS = re.compile(r"\.(?:keras|h5|json|csv|yaml|py|png|md|txt|pb|tflite|onnx)$|\(")
SET_KEY = re.compile(r"--set[ =]['\"]?([^\s='\"]+)=")
NAMED_FILE = re.compile(r"(?<![\w/.-])((?:keras_blood|tests|configs|benchmarks|docs)/[\w/.-]*\w/?)")
# A module named by its path inside the package, as docs/design.md does (serving/publish.py).
PACKAGE_FILE = re.compile(
    r"(?<![\w/.-])((?:config|data|preparation|models|serving|evaluation|training)/[\w/.-]*\.py)\b"
)
MODULE = re.compile(r"\bkeras_blood(?:\.[A-Za-z_]\w*)+")
SHELL_END = frozenset({";", "&&", "||", "|", "&", "(", ")"})
# The commands: the package's top-level modules that run as python -m keras_blood.<command>.
COMMANDS = sorted(
    path.stem
    for path in (REPO / "keras_blood").glob("*.py")
    if 'if __name__ == "__main__":' in path.read_text(encoding="utf-8")
)


@dataclass(frozen=True)
class Snippet:
    """A piece of code in a doc: a line of a code block (continuation lines joined) or an
    inline code span; ``where`` is ``file:line``."""

    where: str
    text: str
    block: bool = False  # a line of a code block (else a span in the prose)


def snippets(path: Path) -> list[Snippet]:
    lines = path.read_text(encoding="utf-8").splitlines()
    name = path.relative_to(REPO)
    found, prose, in_block, i = [], [], False, 0
    while i < len(lines):
        line, start = lines[i], i + 1
        if line.lstrip().startswith("```"):
            in_block = not in_block
            prose.append("")
        elif in_block:
            while line.rstrip().endswith("\\") and i + 1 < len(lines):  # a command continued
                i += 1
                line = line.rstrip()[:-1] + " " + lines[i].strip()
                prose.append("")
            found.append(Snippet(f"{name}:{start}", line, block=True))
            prose.append("")
        else:
            prose.append(line)
        i += 1
    text = "\n".join(prose)  # code blocks blanked: line numbers kept, no span across a block
    for span in re.finditer(r"(`+)(.+?)\1", text, flags=re.DOTALL):
        line = text.count("\n", 0, span.start()) + 1
        found.append(Snippet(f"{name}:{line}", " ".join(span.group(2).split())))
    return found


ALL_SNIPPETS = [snippet for path in DOCS for snippet in snippets(path)]


# ------------------------------------------------------------------------- command lines


def command_lines() -> list[tuple[Snippet, str, list[str]]]:
    """``(snippet, command, arguments)`` for every ``python -m keras_blood.<command> ...``."""
    found = []
    for snippet in ALL_SNIPPETS:
        for match in COMMAND.finditer(snippet.text):
            found.append((snippet, match.group(1), arguments(snippet.text[match.end() :])))
    return found


def arguments(text: str) -> list[str]:
    """The words of a command line up to the end of its shell command (``;``, ``&&``, ``)``,
    a comment, the quote that closes an ``sh -c '...'``), with a synopsis's optional
    brackets (``[--split val]``) and ellipses (``key=value ...``) taken away."""
    lexer = shlex.shlex(text, posix=True, punctuation_chars=";&|()")
    lexer.whitespace_split = True
    words = []
    try:
        for word in lexer:
            if word in SHELL_END:
                break
            words.append(word)
    except ValueError:  # no closing quotation: the line ends inside an outer quote
        return arguments(text[: text.rfind("'")] if "'" in text else text.replace('"', ""))
    out = []
    for word in words:
        if word.startswith("[-"):
            word = word[1:]
        while word.endswith("]") and word.count("]") > word.count("["):
            word = word[:-1]
        if word and word.strip(".") and word != "|":
            out.append(word)
    return out


def lenient(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``parser``, with a placeholder accepted for any typed value and errors raised (not
    printed with an exit) so that a test can report them."""
    for action in parser._actions:  # argparse keeps no public list of them
        if action.type is not None and action.type not in (str, Path):
            action.type = _or_placeholder(action.type)

    def error(message: str) -> typing.NoReturn:
        raise ValueError(message)

    parser.error = error  # type: ignore[method-assign]
    return parser


def _or_placeholder(convert):
    def converted(value: str):
        return value if PLACEHOLDER.search(value) else convert(value)

    converted.__name__ = getattr(convert, "__name__", "value")
    return converted


def build_parser(command: str) -> argparse.ArgumentParser:
    return lenient(importlib.import_module(f"keras_blood.{command}").build_parser())


def parse(command: str, args: list[str]) -> argparse.Namespace:
    """``args`` as ``python -m keras_blood.<command>`` parses them (the launcher passes what
    it does not take to the train command's parser)."""
    if command == "launch":
        known, rest = build_parser("launch").parse_known_args(args)
        return build_parser("train").parse_args(rest)
    return build_parser(command).parse_args(args)


def test_the_docs_show_command_lines():
    """The extraction finds the commands it is meant to (a broken extraction passes nothing)."""
    commands = {command for _, command, _ in command_lines()}
    assert {"train", "evaluate", "predict", "explain", "export_edge", "sweep", "launch", "color", "adapt"} <= commands
    assert arguments("configs/x.yaml [--set key=value ...] [--output a.csv [--overwrite]]  # why") == [
        *("configs/x.yaml", "--set", "key=value", "--output", "a.csv", "--overwrite"),
    ]
    assert arguments("c.yaml --set data.root=DIR'") == ["c.yaml", "--set", "data.root=DIR"]
    assert arguments("c.yaml; done") == ["c.yaml"]


def test_every_command_line_in_the_docs_parses():
    problems = []
    for snippet, command, args in command_lines():
        if command not in COMMANDS:
            problems.append(f"{snippet.where}: python -m keras_blood.{command}: no such command")
            continue
        if not args and not snippet.block:  # the prose names the command ("`python -m keras_blood.launch` reads")
            continue
        try:
            parse(command, args)
        except ValueError as exc:
            problems.append(f"{snippet.where}: python -m keras_blood.{command} {shlex.join(args)}: {exc}")
    assert not problems, "\n".join(problems)


def flags_in_prose() -> list[tuple[Snippet, str, str]]:
    """``(snippet, command, flag)`` for the prose's short forms, e.g. `evaluate --data`."""
    short = re.compile(rf"(?:^|\s)({'|'.join(COMMANDS)})((?:\s+--[a-z][\w-]*(?:[ =][^\s-]\S*)?)+)")
    return [
        (snippet, match.group(1), flag)
        for snippet in ALL_SNIPPETS
        if not COMMAND.search(snippet.text)
        for match in short.finditer(snippet.text)
        for flag in re.findall(r"--[a-z][\w-]*", match.group(2))
    ]


def test_every_flag_the_prose_gives_a_command_exists():
    found = flags_in_prose()
    assert len(found) > 10  # the extraction finds them
    problems = []
    for snippet, command, flag in found:
        options = {option for action in build_parser(command)._actions for option in action.option_strings}
        if command == "launch":  # the rest of its line is the train command's
            options |= {option for action in build_parser("train")._actions for option in action.option_strings}
        if flag not in options:
            problems.append(f"{snippet.where}: {command} {flag}: no such option")
    assert not problems, "\n".join(problems)


def test_a_made_up_flag_or_command_fails_the_check():
    with pytest.raises(ValueError, match="unrecognized arguments: --made-up"):
        parse("train", arguments("configs/dropout03.yaml --made-up"))
    with pytest.raises(ValueError, match="unrecognized arguments: --made-up"):
        parse("launch", arguments("--workers 2 configs/dropout03.yaml --made-up"))
    parse("predict", arguments("VERSION cell.jpg --max-pixels N --batch-size 8"))  # placeholders pass
    with pytest.raises(ValueError, match="not a whole number"):
        parse("predict", arguments("VERSION cell.jpg --max-pixels many"))


def test_every_command_builds_its_parser_without_running():
    """What the docs test (and docs/gen_ref.py) read: each command's own parser."""
    assert "train" in COMMANDS
    for command in COMMANDS:
        parser = importlib.import_module(f"keras_blood.{command}").build_parser()
        assert parser.prog == f"python -m keras_blood.{command}"


# ------------------------------------------------------------------------- config keys


def key_problem(key: str) -> str | None:
    """Why the dotted ``key`` is no config key (None where it is one): it walks the schema,
    any model family's keys under ``model``, any name under a mapping (data.sources.<name>)
    and ``sweep.`` in a sweep file."""
    parts = RENAMED_KEYS.get(key, key).split(".")  # an old spelling still works
    nodes: list[Any] = [SweepSpec] if parts[0] == "sweep" else [Config]
    for part in parts[1:] if parts[0] == "sweep" else parts:
        nodes = [child for node in nodes for child in _children(node, part)]
        if not nodes:
            return f"{key}: no such config key"
    return None


def _children(node: Any, part: str) -> list[Any]:
    if isinstance(node, tuple) and node[0] == "mapping":  # any name, then the mapping's value
        return _unwrap(node[1])
    if isinstance(node, type) and issubclass(node, BaseModel) and part in node.model_fields:
        return _unwrap(node.model_fields[part].annotation)
    return []


def _unwrap(annotation: Any) -> list[Any]:
    """What a key of this type holds: config sections, a mapping, or a value ("leaf")."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return _unwrap(args[0])
    if origin in (typing.Union, types.UnionType):
        return [node for arg in args if arg is not type(None) for node in _unwrap(arg)]
    if origin is dict:
        return [("mapping", args[1])]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return ["leaf"]


def test_the_key_check_knows_the_schema():
    for key in (
        "data.cell_crop.size",
        "data.sources.kaggle.root",
        "data.sources.<name>.root",
        "model.fine_tune_from",
        "model.widths",
        "model.l2",
        "sweep.models.vgg16.fine_tune_from",
        "output.publish_dir",
    ):
        assert key_problem(key) is None, key
    for key in ("train.made_up", "data.cell_crop.size.more", "model.nope", "data.sources.kaggle.nope", "sweep.nope"):
        assert key_problem(key) == f"{key}: no such config key"


def set_keys() -> list[tuple[Snippet, str]]:
    return [(snippet, key) for snippet in ALL_SNIPPETS for key in SET_KEY.findall(snippet.text)]


def test_every_set_key_in_the_docs_exists():
    keys = set_keys()
    assert len(keys) > 20  # the extraction finds them
    problems = [
        f"{snippet.where}: --set {problem}"
        for snippet, key in keys
        if key.lower() != "key" and (problem := key_problem(key))
    ]
    assert not problems, "\n".join(problems)


def test_every_config_key_named_in_the_docs_exists():
    named = [
        (snippet, match.group(0))
        for snippet in ALL_SNIPPETS
        if (match := CONFIG_KEY.match(snippet.text)) and not NOT_KEYS.search(snippet.text.split()[0])
    ]
    assert len(named) > 50  # the extraction finds them
    problems = [f"{snippet.where}: `{key}`: {problem}" for snippet, key in named if (problem := key_problem(key))]
    assert not problems, "\n".join(problems)


def test_a_made_up_key_fails_the_check():
    assert SET_KEY.findall("python -m keras_blood.train c.yaml --set train.made_up=1") == ["train.made_up"]
    assert key_problem("train.made_up") == "train.made_up: no such config key"


# ------------------------------------------------------------------------- named files


def test_every_file_the_docs_name_exists():
    """Files and folders of the repository named in the docs, and in the comments of the
    configs, pyproject.toml and mkdocs.yml (a path with a placeholder is checked up to it)."""
    named = [(snippet, path) for snippet in ALL_SNIPPETS for path in NAMED_FILE.findall(snippet.text)]
    assert len(named) > 20  # the extraction finds them
    commented = [*sorted((REPO / "configs").glob("*.yaml")), REPO / "pyproject.toml", REPO / "mkdocs.yml"]
    for doc in [*DOCS, *commented]:  # and outside code too, with the line
        for number, line in enumerate(doc.read_text(encoding="utf-8").splitlines(), 1):
            where = Snippet(f"{doc.relative_to(REPO)}:{number}", line)
            named += [(where, path) for path in NAMED_FILE.findall(line)]
            named += [(where, f"keras_blood/{path}") for path in PACKAGE_FILE.findall(line)]
    missing = sorted({f"{snippet.where}: {path}" for snippet, path in named if not (REPO / path).exists()})
    assert not missing, "\n".join(missing)


def module_problem(dotted: str) -> str | None:
    """Why ``keras_blood.a.b[.name]`` names nothing (None where it names a module, or a
    name a module defines at its top level), read from the source without importing it."""
    parts = dotted.split(".")
    for end in range(len(parts), 0, -1):
        base = REPO.joinpath(*parts[:end])
        source = base.with_suffix(".py") if base.with_suffix(".py").is_file() else base / "__init__.py"
        if source.is_file():
            break
    else:
        return f"{dotted}: no such module"
    if end == len(parts):
        return None
    defined = set()
    for node in ast.parse(source.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            defined.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            defined.update(target.id for target in targets if isinstance(target, ast.Name))
        elif isinstance(node, ast.Import | ast.ImportFrom):
            defined.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
    module = ".".join(parts[:end])
    return None if parts[end] in defined else f"{dotted}: {module} has no {parts[end]}"


def test_every_module_the_docs_name_exists():
    named = [(snippet, name) for snippet in ALL_SNIPPETS for name in MODULE.findall(snippet.text)]
    assert len(named) > 20  # the extraction finds them
    problems = sorted({f"{snippet.where}: {problem}" for snippet, name in named if (problem := module_problem(name))})
    assert not problems, "\n".join(problems)
    assert module_problem("keras_blood.serving.publish.publish_version") is None
    assert module_problem("keras_blood.serving.publish.made_up") is not None
    assert module_problem("keras_blood.made_up") is not None


def test_every_test_the_docs_name_exists():
    defined = {
        node.name
        for path in (REPO / "tests").rglob("test_*.py")
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
    }
    named = [
        (snippet, name)
        for snippet in ALL_SNIPPETS
        # A test's name says what it checks in several words (test_simple is a split).
        for name in re.findall(r"(?:^|[\s`:])(test(?:_[a-z0-9]+){3,})\b(?!\.py)", snippet.text)
    ]
    assert len(named) > 20  # the extraction finds them
    missing = [f"{snippet.where}: {name}" for snippet, name in named if name not in defined]
    assert not missing, "\n".join(missing)


# ------------------------------------------------------------------------- config reference


def gen_ref():
    """docs/gen_ref.py, imported (mkdocs runs it, and only then does it write the pages)."""
    spec = importlib.util.spec_from_file_location("gen_ref", REPO / "docs" / "gen_ref.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def generated_reference() -> str:
    """docs/gen_ref.py's config page, as mkdocs builds it."""
    return gen_ref().config_reference()


def test_the_command_reference_has_every_command():
    assert sorted(gen_ref().COMMANDS) == COMMANDS


def empty_descriptions(page: str) -> list[str]:
    """The keys of the page's tables whose last cell (their meaning) is empty."""
    cells = [re.split(r"(?<!\\)\|", line.strip())[1:-1] for line in page.splitlines() if line.startswith("| `")]
    return [row[0].strip() for row in cells if not row[-1].strip()]  # a "\|" is inside a cell


def test_every_config_key_has_a_description():
    page = generated_reference()
    assert page.count("| `") > 100  # every key is a row
    assert empty_descriptions(page) == []


def test_an_empty_description_is_found():
    page = "\n".join(
        [
            "| key | type | default | meaning |",
            "|---|---|---|---|",
            "| `train.a` | int | `1` | said |",
            "| `train.b` | int | `2` |  |",
        ]
    )
    assert empty_descriptions(page) == ["`train.b`"]
