"""How a command ends (keras_blood.config.cli.run_main) and the folders and files it makes
(keras_blood.files): exit statuses, and a new name never reused."""

import importlib

import pytest

from keras_blood import files as folders
from keras_blood.config.cli import run_main
from keras_blood.errors import DataError


def test_run_main_exit_statuses(capsys):
    def fails(argv):
        raise DataError("no data at /x")

    assert run_main(fails) == 2
    assert capsys.readouterr().err == "error: no data at /x\n"
    assert run_main(lambda argv: 1) == 1  # e.g. predict: some files failed
    assert run_main(lambda argv: "a path") == 0
    assert run_main(lambda argv: True) == 0  # only an int is an exit status


def test_new_folders_and_files_are_never_reused(tmp_path, monkeypatch):
    monkeypatch.setattr(folders.time, "strftime", lambda fmt: "20250101-000000")
    made = [folders.new_folder(tmp_path / "reports", "m-v1-test-") for _ in range(3)]
    assert [p.name for p in made] == [
        "m-v1-test-20250101-000000",
        "m-v1-test-20250101-000000-1",
        "m-v1-test-20250101-000000-2",
    ]
    first = folders.new_file(tmp_path / "predictions", "m-v1-", ".csv")
    first.write_text("keep")
    second = folders.new_file(tmp_path / "predictions", "m-v1-", ".csv")
    assert (first.name, second.name) == ("m-v1-20250101-000000.csv", "m-v1-20250101-000000-1.csv")
    assert first.read_text() == "keep" and second.read_text() == ""


def test_gives_up_after_100_names(tmp_path, monkeypatch):
    monkeypatch.setattr(folders.time, "strftime", lambda fmt: "t")
    for _ in range(100):
        folders.new_folder(tmp_path)
    with pytest.raises(folders.KerasBloodError, match="could not create"):
        folders.new_folder(tmp_path)


@pytest.mark.parametrize("command", ["predict", "count", "adapt", "evaluate"])
@pytest.mark.parametrize(
    ("value", "said"), [("0", "must be at least 1 (got 0)"), ("many", "'many' is not a whole number")]
)
def test_counts_below_one_are_one_line(command, value, said, capsys):
    module = importlib.import_module(f"keras_blood.{command}")
    flag = "--max-pixels" if command == "evaluate" else "--batch-size"
    needed = (
        ["saved_models/x/1", "--data", "images"] if command in ("adapt", "evaluate") else ["saved_models/x/1", "a.png"]
    )
    with pytest.raises(SystemExit) as info:
        module.build_parser().parse_args([*needed, flag, value])
    assert info.value.code == 2
    assert f"argument {flag}: {said}" in capsys.readouterr().err
