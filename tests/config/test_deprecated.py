"""Old spellings still work and say so in one line: the flags --no-export, --output-dir and
--out, and the config key output.export_dir (in a file and with --set). These tests keep the
old spellings on purpose."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from keras_blood import color, evaluate, explain, train
from keras_blood.config.deprecated import start_command
from keras_blood.config.loading import load_config
from keras_blood.config.sweep import load_sweep
from keras_blood.errors import ConfigError
from tests.helpers import REPO


@pytest.fixture(autouse=True)
def fresh_command():
    start_command()  # each test a command of its own: its warnings are said again


def warnings(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]


@pytest.mark.parametrize(
    "module, argv, dest, value, old, new",
    [
        (train, ["c.yaml", "--no-export"], "no_publish", True, "--no-export", "--no-publish"),
        (evaluate, ["VERSION", "--output-dir", "r"], "output", Path("r"), "--output-dir", "--output"),
        (explain, ["VERSION", "a.png", "--out", "e"], "output", Path("e"), "--out", "--output"),
        (color, ["c.yaml", "--out", "f.png"], "output", Path("f.png"), "--out", "--output"),
    ],
)
def test_an_old_flag_works_and_says_once_that_it_is_deprecated(module, argv, dest, value, old, new, capsys):
    args = module.build_parser().parse_args(argv)
    assert getattr(args, dest) == value
    assert warnings(capsys) == [f"warning: {old} is deprecated; use {new}"]
    # The new spelling: the same value, no warning; the old one is not in --help.
    args = module.build_parser().parse_args([new if word == old else word for word in argv])
    assert getattr(args, dest) == value and warnings(capsys) == []
    assert not re.search(rf"{old}(?![\w-])", module.build_parser().format_help())


def test_evaluate_and_explain_default_their_output_folder(capsys):
    assert evaluate.build_parser().parse_args(["V"]).output == Path("reports")
    assert explain.build_parser().parse_args(["V", "a.png"]).output == Path("explanations")
    assert warnings(capsys) == []


def test_no_export_with_resume_is_refused_in_the_new_words(capsys):
    from keras_blood.config.cli import run_main

    assert run_main(train.main, ["--resume", "latest", "c.yaml", "--no-export"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "warning: --no-export is deprecated; use --no-publish",
        "error: --no-publish with --resume: a run keeps the publishing settings it started with",
    ]


def test_the_old_config_key_works_in_a_file_and_with_set(write_config, tmp_path, capsys):
    path = write_config({"model": {"name": "fnn"}, "output": {"export_dir": str(tmp_path / "old")}})
    assert load_config(path).output.publish_dir == tmp_path / "old"
    assert warnings(capsys) == [f"warning: output.export_dir (in {path}) is deprecated; use output.publish_dir"]
    load_config(path)  # read again in one command: said once
    assert warnings(capsys) == []

    config = load_config(REPO / "configs" / "fnn.yaml", [f"output.export_dir={tmp_path / 'set'}"])
    assert config.output.publish_dir == tmp_path / "set"
    assert warnings(capsys) == ["warning: --set output.export_dir is deprecated; use --set output.publish_dir"]
    # --set wins over the file whichever spelling either uses.
    assert load_config(path, [f"output.publish_dir={tmp_path / 'new'}"]).output.publish_dir == tmp_path / "new"


def test_both_spellings_at_once_is_one_line_naming_both(write_config, tmp_path):
    path = write_config({"model": {"name": "fnn"}, "output": {"export_dir": "a", "publish_dir": "b"}})
    with pytest.raises(
        ConfigError, match=r"output.export_dir and output.publish_dir are one key.*keep output.publish_dir"
    ):
        load_config(path)


def test_a_config_a_version_recorded_is_read_without_a_warning(write_config, tmp_path, capsys):
    path = write_config({"model": {"name": "fnn"}, "output": {"export_dir": "old"}})
    recorded = tmp_path / "saved_models" / "fnn" / "1" / "assets.extra" / "config.yaml"
    recorded.parent.mkdir(parents=True)
    recorded.write_text(Path(path).read_text())
    assert load_config(recorded).output.publish_dir == Path("old")
    assert warnings(capsys) == []


def test_a_sweep_file_takes_the_old_key_too(tmp_path, capsys):
    cells = load_sweep(REPO / "configs" / "georgetown.yaml", [f"output.export_dir={tmp_path}", "sweep.models=[basic]"])
    assert {cell.config.output.publish_dir for cell in cells.cells} == {tmp_path}
    assert len(warnings(capsys)) == 1
