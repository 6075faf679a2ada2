"""How a command ends (keras_blood.config.cli.run_main) and the folders and files it makes
(keras_blood.files): exit statuses, and a new name never reused."""

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
