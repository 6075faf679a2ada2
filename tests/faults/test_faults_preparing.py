"""Data-layer faults: preparing a lab's folder once, safely, and resuming only on the split it trained on

Each case is a lab's folder of a few tiny PNG (or BMP) captures in tmp_path. Preparing:
a list named by another spelling (relative, through a symlink) reuses the copy; a run that
replaces a copy waits for the runs reading it; ``data.skip_unreadable`` reuses its copy,
and a class with no readable file left is one line; a file replaced with its size and
modification time put back is noticed. Resuming: a run records its split, and
``--resume`` on a folder that changed since is one line (exit 2), never a split drawn
again or an error blamed on the backup.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from keras_blood.errors import DataError
from tests.helpers import REPO, command_lines

COLOURS = {
    "eosinophil": (200, 60, 60),
    "neutrophil": (60, 180, 60),
    "lymphocyte": (60, 60, 200),
    "basophil": (120, 40, 160),
}


def capture(colour, seed: int, size: int = 12) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(rng.normal(colour, 20, (size, size, 3)), 0, 255).astype(np.uint8)


def tiny_lab(
    root: Path,
    classes=("eosinophil", "neutrophil"),
    per_class: int = 8,
    start: int = 0,
    fmt: str = "PNG",
    split: str = "",
) -> Path:
    """``root/[split/]<class>/c<i>.<fmt>``: ``per_class`` tiny captures of each class, and
    ``root/labels.tsv`` listing every image under root (rewritten each call)."""
    for name in classes:
        for i in range(start, start + per_class):
            path = root / split / name / f"c{i}.{fmt.lower()}"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(capture(COLOURS[name], 1000 * list(COLOURS).index(name) + i)).save(path, format=fmt)
    rows = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.suffix in (".png", ".bmp"))
    (root / "labels.tsv").write_text("".join(f"{row}\t{row.split('/')[-2]}\n" for row in rows))
    return root


def load(root, tfds_dir: Path, **data):
    from keras_blood.config.schema import DataConfig
    from keras_blood.data import load_data

    return load_data(DataConfig(name="image_folder", root=root, tfds_dir=tfds_dir, image_size=16, **data))


def prepared(out: str) -> bool:
    return any(line.startswith("Preparing image_folder/") for line in out.splitlines())


# ----------------------------------------------------------------------------- preparing


def test_a_list_named_relatively_or_through_a_symlink_reuses_the_prepared_copy(tmp_path, capsys, monkeypatch):
    lab = tiny_lab(tmp_path / "lab")
    (lab / "current.tsv").symlink_to("labels.tsv")  # a lab's habit: the list of the day
    (tmp_path / "lab-link").symlink_to(lab)
    tfds = tmp_path / "tfds"
    load(lab / "labels.tsv", tfds)
    assert prepared(capsys.readouterr().out)
    monkeypatch.chdir(lab)
    for spelling in (
        "labels.tsv",
        "./current.tsv",
        lab / "current.tsv",
        tmp_path / "lab-link" / "labels.tsv",
        "../lab-link/current.tsv",
    ):
        load(spelling, tfds)
        out = capsys.readouterr().out
        assert not prepared(out), (spelling, out)
    assert len(list((tfds / "image_folder").glob("*/1.0.0"))) == 1


def python(code: str, *args: str, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        cwd=cwd,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


LOAD = """
    import sys
    from keras_blood.config.cli import run_main
    from keras_blood.config.schema import DataConfig
    from keras_blood.data import load_data
    def main(argv):
        data = load_data(DataConfig(name="image_folder", root=argv[0], tfds_dir=argv[1], image_size=16))
        print("loaded", sum(len(split) for split in data.splits.values()))
    sys.exit(run_main(main, sys.argv[1:]))
"""


def lock_waiters(folder: Path) -> int:
    """Lock requests waiting on ``folder`` (``/proc/locks`` lists them with ``->``, and
    each lock's device and inode as ``MAJ:MIN:INODE``)."""
    inode = f":{folder.stat().st_ino}"
    lines = Path("/proc/locks").read_text().splitlines()
    return sum("->" in line and line.split()[-3].endswith(inode) for line in lines)


@pytest.mark.slow
def test_a_copy_being_read_is_not_replaced_until_its_reader_is_done(tmp_path, capsys):
    """Two runs on one list, one by a relative path and one through a symlink: the second
    does not prepare again. Then the folder changes while a run reads the copy (the
    reader's lock held here): a third run waits for it, then prepares the copy again."""
    from keras_blood.data import prepared as preparing

    lab = tiny_lab(tmp_path / "lab")
    (lab / "current.tsv").symlink_to("labels.tsv")
    tfds = tmp_path / "tfds"
    first = python(LOAD, "labels.tsv", str(tfds), cwd=lab).communicate(timeout=300)
    assert "loaded 16" in first[0] and prepared(first[0]), first
    second = python(LOAD, str(lab / "current.tsv"), str(tfds), cwd=tmp_path).communicate(timeout=300)
    assert "loaded 16" in second[0] and not prepared(second[0]), second

    (copy,) = (tfds / "image_folder").glob("*/1.0.0")
    files = sorted(p.name for p in copy.iterdir())
    tiny_lab(lab, per_class=2, start=100)  # two more images of each class
    if not os.access("/proc/locks", os.R_OK):
        pytest.skip("/proc/locks is not readable here: a waiting run cannot be told from a slow one")
    with preparing.reading(copy):  # what a run reading the copy holds
        third = python(LOAD, str(lab / "labels.tsv"), str(tfds), cwd=tmp_path)
        deadline = time.monotonic() + 240
        while not lock_waiters(copy.parent) and third.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert third.poll() is None, third.communicate()
        assert lock_waiters(copy.parent)  # the third run waits on the reader
        assert sorted(p.name for p in copy.iterdir()) == files  # and the copy is whole
    out, err = third.communicate(timeout=300)
    assert third.returncode == 0 and "loaded 20" in out and "again (its source changed)" in out, (out, err)


def test_a_copy_replaced_after_it_was_checked_is_one_line_not_damage(tmp_path, capsys):
    """A run whose copy another run prepared again between its check and its read: one
    line saying so, not "damaged"."""
    from keras_blood.data.prepared import read_all

    lab = tiny_lab(tmp_path / "lab")
    load(lab, tmp_path / "tfds")
    (copy,) = (tmp_path / "tfds" / "image_folder").glob("*/1.0.0")
    info = copy / "dataset_info.json"
    os.utime(info, ns=(info.stat().st_atime_ns, info.stat().st_mtime_ns + 10**9))  # as a new copy would be
    with pytest.raises(DataError) as caught:
        read_all(str(copy), ["train"])
    message = str(caught.value)
    assert "\n" not in message and "damaged" not in message and "prepared again by another run" in message, message
    assert "run again" in message


def test_skip_unreadable_reuses_its_copy_and_a_class_left_without_images_is_one_line(tmp_path, capsys):
    lab = tiny_lab(tmp_path / "lab")
    (lab / "neutrophil" / "broken.png").write_bytes(b"\x89PNG not really")
    tfds = tmp_path / "tfds"
    data = load(lab, tfds, skip_unreadable=True)
    assert sum(len(split) for split in data.splits.values()) == 16 and prepared(capsys.readouterr().out)
    load(lab, tfds, skip_unreadable=True)
    out = capsys.readouterr().out
    assert not prepared(out), out

    # Every basophil file unreadable: the class is named, nothing is published.
    basophil = tiny_lab(tmp_path / "basophil", classes=("eosinophil", "neutrophil", "basophil"))
    for path in (basophil / "basophil").iterdir():
        path.write_bytes(b"\x89PNG cut")
    with pytest.raises(DataError) as caught:
        load(basophil, tfds, skip_unreadable=True)
    message = str(caught.value)
    assert "\n" not in message and "class 'basophil'" in message and "all its 8 files are unreadable" in message, (
        message
    )
    assert not list((tfds / "image_folder").glob("basophil-*/1.0.0"))

    # Split folders: the test split's basophils all unreadable, the others fine.
    splits = tmp_path / "splits"
    for split in ("train", "validation", "test"):
        tiny_lab(splits, classes=("eosinophil", "basophil"), per_class=3, split=split)
    for path in (splits / "test" / "basophil").iterdir():
        path.write_bytes(b"GIF8 cut")
    with pytest.raises(DataError) as caught:
        load(splits, tfds, skip_unreadable=True)
    message = str(caught.value)
    assert "\n" not in message and "class 'basophil' has no readable images left in the test split" in message, message


def test_a_file_replaced_with_its_size_and_mtime_put_back_is_prepared_again(tmp_path, capsys):
    lab = tiny_lab(tmp_path / "lab", fmt="BMP")  # uncompressed: another capture of the same size is the same size
    tfds = tmp_path / "tfds"
    load(lab, tfds)
    assert prepared(capsys.readouterr().out)
    load(lab, tfds)
    assert not prepared(capsys.readouterr().out)  # an untouched folder is reused

    path = lab / "eosinophil" / "c3.bmp"
    before = path.stat()
    time.sleep(0.01)  # a later change time, on filesystems that keep coarse times
    Image.fromarray(capture(COLOURS["neutrophil"], 7)).save(path, format="BMP")  # another capture, same size
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))  # as rsync -t or a restore would
    after = path.stat()
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    load(lab, tfds)
    out = capsys.readouterr().out
    assert "again (its source changed)" in out, out


# ----------------------------------------------------------------------------- the run's record of its split


def test_a_runs_record_names_each_files_split_and_finds_what_changed(tmp_path):
    """The record of an image_folder source (and of one inside data.sources): each file's
    class and split, and what moved when images are added; a published set's record is
    its prepared copy's source fingerprint."""
    from keras_blood.config.schema import DataConfig
    from keras_blood.data.split_record import split_changes, split_record

    lab = tiny_lab(tmp_path / "lab", per_class=24)  # 48 files
    config = DataConfig(name="image_folder", root=lab, image_size=16)
    recorded = split_record(config, seed=42)
    (source,) = recorded.values()
    assert len(source["rows"]) == 48 and {row[2] for row in source["rows"]} == {"train", "val", "test"}
    assert split_changes(recorded, split_record(config, seed=42)) == (None, [])

    tiny_lab(lab, per_class=3, start=100)  # six images added
    refusal, _ = split_changes(recorded, split_record(config, seed=42))
    assert refusal is not None and "\n" not in refusal
    assert str(lab) in refusal and "changed since the run started" in refusal and "6 files added" in refusal, refusal
    assert "in another split" in refusal, refusal

    sources = DataConfig.model_validate(
        {
            "name": "sources",
            "classes": ["eosinophil", "neutrophil"],
            "image_size": 16,
            "sources": {"lab": {"name": "image_folder", "root": str(tmp_path / "other")}},
        }
    )
    other = tiny_lab(tmp_path / "other")
    recorded = split_record(sources, seed=0)
    assert list(recorded) == ["data.sources.lab"]
    tiny_lab(other, classes=("eosinophil",), per_class=3, start=100)
    refusal, _ = split_changes(recorded, split_record(sources, seed=0))
    assert refusal.startswith(f"data.sources.lab: {other} changed since the run started (3 files added"), refusal

    from tests.helpers import synthetic_npz

    (tmp_path / "mnist").mkdir()
    synthetic_npz(tmp_path / "mnist" / "bloodmnist.npz")
    published = split_record(DataConfig(root=tmp_path / "mnist", tfds_dir=tmp_path / "tfds"), seed=0)
    assert published["data"]["data"] == "bloodmnist" and published["data"]["source_fingerprint"]
    assert "rows" not in published["data"]


def lab_config(tmp_path: Path, root: Path) -> Path:
    raw = {
        "name": "lab",
        "seed": 42,
        "data": {"name": "image_folder", "root": str(root), "image_size": 16, "tfds_dir": str(tmp_path / "tfds")},
        "model": {"name": "fnn", "hidden_units": 16},
        "train": {"epochs": 2, "batch_size": 8, "learning_rate": 0.01, "early_stopping_patience": 0},
        "output": {"runs_dir": str(tmp_path / "runs"), "publish_dir": str(tmp_path / "models"), "publish": "never"},
    }
    path = tmp_path / "lab.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.slow
def test_resume_on_a_folder_that_changed_is_one_line_and_on_the_same_folder_continues(tmp_path, command, monkeypatch):
    """A run stopped after epoch 1; images added, then a class added: ``--resume`` is one
    line (exit 2) naming what changed and what to do, never a split drawn again nor an
    error blamed on the backup; the folder put back, it continues."""
    import keras

    from keras_blood.training.trainer import Trainer

    lab = tiny_lab(tmp_path / "lab", per_class=24)  # 48 files
    config = lab_config(tmp_path, lab)

    class StopAfterFirstEpoch(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            raise KeyboardInterrupt  # after the epoch's backup was committed: a killed run

    original = Trainer.callbacks
    monkeypatch.setattr(Trainer, "callbacks", lambda *args: [*original(*args), StopAfterFirstEpoch()])
    stopped = command("keras_blood.train", str(config))
    monkeypatch.setattr(Trainer, "callbacks", original)
    assert stopped.returncode == 130, stopped.stderr[-3000:]
    (run_dir,) = (tmp_path / "runs" / "lab").iterdir()
    assert json.loads((run_dir / "status.json").read_text())["state"] == "training"
    assert (run_dir / "data_split.json").is_file()

    tiny_lab(lab, per_class=4, start=100)  # eight images added
    resumed = command("keras_blood.train", "--resume", str(run_dir))
    (line,) = command_lines(resumed.stderr)
    assert resumed.returncode == 2 and "Traceback" not in resumed.stderr
    assert (
        line.startswith(f"error: {lab} changed since the run started (8 files added") and "in another split" in line
    ), line
    assert f"python -m keras_blood.train {run_dir / 'config.yaml'}" in line and "put the folder back" in line, line
    assert not any(line.startswith("Resuming") for line in resumed.stdout.splitlines())

    for path in lab.rglob("c1[0-9][0-9].png"):  # the added images taken out again
        path.unlink()
    tiny_lab(lab, classes=("lymphocyte",), per_class=10)  # a class added
    resumed = command("keras_blood.train", "--resume", str(run_dir))
    (line,) = command_lines(resumed.stderr)
    assert resumed.returncode == 2 and "class 'lymphocyte' added" in line and "backup" not in line, line

    for path in (lab / "lymphocyte").iterdir():
        path.unlink()
    (lab / "lymphocyte").rmdir()
    resumed = command("keras_blood.train", "--resume", str(run_dir))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Resuming training after epoch 1" in resumed.stdout
    assert json.loads((run_dir / "status.json").read_text())["state"] == "finished"
