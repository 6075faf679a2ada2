"""Data-layer faults: a lab's folders and lists read right, or refused in one line.

The folders and lists labs really write: class folders spelt in two cases, file names that
are not UTF-8, list cells holding a line break, aliases that name two classes, hidden
files and symlinked subfolders, names with a trailing space, list rows naming a folder or
the same file twice, an empty ``data.root``, a group pattern that backtracks without end.
Each is read as meant, or is one DataError/ConfigError line naming the file, class or key
and what to do (exit status 2 through the commands).
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from keras_blood.config.loading import load_config
from keras_blood.data.classes import ClassNames
from keras_blood.data.lab_data import lab_listing
from keras_blood.data.sources.image_folder.listing import fingerprint, list_images
from keras_blood.errors import ConfigError, DataError
from tests.helpers import REPO, command_lines

# A name as an older system wrote it on a share: Latin-1 bytes, not UTF-8.
NOT_UTF8 = b"caf\xe9_1.png"


def tiny(folder: Path, count: int, value: int = 100, names=None) -> list[Path]:
    """``count`` 8x8 PNGs of one grey ``value`` (with a little noise) in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(value)
    paths = []
    for name in names or [f"slide{i}_{i}.png" for i in range(count)]:
        path = Path(os.fsdecode(os.fsencode(folder) + b"/" + name)) if isinstance(name, bytes) else folder / name
        pixels = np.clip(rng.normal(value, 5, (8, 8, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(path, format="PNG")
        paths.append(path)
    return paths


def refused(call, *expected: str, kind=DataError) -> str:
    """The one-line message of the error ``call()`` raises, checked to hold each of ``expected``."""
    with pytest.raises(kind) as error:
        call()
    message = str(error.value)
    assert "\n" not in message, message
    for part in expected:
        assert part in message, message
    return message


def classes_of(listing) -> dict[str, str]:
    """file -> class name."""
    return {file: listing.class_names[label] for file, label in zip(listing.files.tolist(), listing.labels.tolist())}


def write_config(tmp_path: Path, root: Path, **data) -> Path:
    """A quick image_folder config: 8x8 images, a small dense network, one epoch."""
    import yaml

    config = {
        "name": "lab",
        "seed": 0,
        "data": {
            "name": "image_folder",
            "image_size": 8,
            "root": str(root),
            "tfds_dir": str(tmp_path / "tfds"),
            **data,
        },
        "model": {"name": "fnn", "hidden_units": 8},
        "train": {"epochs": 1, "batch_size": 8, "early_stopping_patience": 0},
        "output": {"runs_dir": str(tmp_path / "runs"), "publish_dir": str(tmp_path / "models")},
    }
    path = tmp_path / "lab.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def data_line(stdout: str) -> str:
    (line,) = [line for line in stdout.splitlines() if line.startswith("Data: ") and "images" in line]
    return line


# ----------------------------------------------------------------------------- 1. case


def case_split_folders(root: Path) -> Path:
    """Kaggle's way: TRAIN/EOSINOPHIL beside TEST/Eosinophil, five slides a class each."""
    for split, eosinophil, neutrophil in (("TRAIN", "EOSINOPHIL", "NEUTROPHIL"), ("TEST", "Eosinophil", "neutrophil")):
        tiny(root / split / eosinophil, 10, 60)
        tiny(root / split / neutrophil, 10, 200)
    return root


def test_class_folders_spelt_in_two_cases_are_one_class(tmp_path):
    listing = list_images(case_split_folders(tmp_path / "lab"), seed=0)
    assert listing.class_names == ["EOSINOPHIL", "NEUTROPHIL"] and len(listing) == 40
    for file, name in classes_of(listing).items():
        assert file.split("/")[1].casefold() == name.casefold(), (file, name)


def test_a_list_with_two_spellings_of_a_class_reads_one_class(tmp_path):
    tiny(tmp_path / "a", 10, 60)
    tiny(tmp_path / "b", 10, 200)
    rows = [f"a/slide{i}_{i}.png,{'Eosinophil' if i % 2 else 'EOSINOPHIL'}" for i in range(10)]
    rows += [f"b/slide{i}_{i}.png,neutrophil" for i in range(10)]
    (tmp_path / "list.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    listing = list_images(tmp_path / "list.csv", seed=0)
    assert listing.class_names == ["EOSINOPHIL", "neutrophil"]
    assert {name for file, name in classes_of(listing).items() if file.startswith("a/")} == {"EOSINOPHIL"}


def fake_version(path: Path, class_names: list[str]) -> Path:
    """What lab_listing reads of an exported version: its recorded class names."""
    (path / "assets.extra").mkdir(parents=True)
    (path / "assets.extra" / "class_names.json").write_text(json.dumps(class_names))
    return path


def test_another_labs_folder_with_two_spellings_is_listed_for_evaluate(tmp_path):
    tiny(tmp_path / "other" / "EOSINOPHIL", 3, 60)
    tiny(tmp_path / "other" / "Eosinophil", 2, 60, names=["x1.png", "x2.png"])
    tiny(tmp_path / "other" / "neutrophil", 3, 200)
    version = fake_version(tmp_path / "version", ["eosinophil", "lymphocyte", "neutrophil"])
    config = SimpleNamespace(data=SimpleNamespace(class_aliases=None))
    listing = lab_listing(version, tmp_path / "other", config)
    assert len(listing) == 8 and np.bincount(listing.labels, minlength=3).tolist() == [5, 0, 3]


@pytest.mark.slow
def test_case_spellings_train_and_evaluate_through_the_commands(tmp_path, command):
    root = case_split_folders(tmp_path / "lab")
    trained = command("keras_blood.train", str(write_config(tmp_path, root)))
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert "2 classes ['EOSINOPHIL', 'NEUTROPHIL']; train 16, val 4, test 20 images" in data_line(trained.stdout)
    version = Path(trained.stdout.strip().splitlines()[-1])

    other = tmp_path / "other"
    tiny(other / "EOSINOPHIL", 3, 60)
    tiny(other / "Eosinophil", 2, 60, names=["x1.png", "x2.png"])
    tiny(other / "NEUTROPHIL", 3, 200)
    evaluated = command(
        "keras_blood.evaluate", str(version), "--data", str(other), "--output", str(tmp_path / "reports")
    )
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    figures = json.loads((Path(evaluated.stdout.strip().splitlines()[-1]) / "metrics.json").read_text())
    assert figures["num_examples"] == 8 and figures["left_out"] == {}


# ----------------------------------------------------------------------------- 2. names not UTF-8


def not_utf8_folder(root: Path) -> Path:
    tiny(root / "eosinophil", 10, 60)
    tiny(root / "eosinophil", 1, 60, names=[NOT_UTF8])
    tiny(root / "neutrophil", 10, 200)
    return root


def test_a_file_name_not_utf8_is_listed_fingerprinted_and_shown_escaped(tmp_path):
    root = not_utf8_folder(tmp_path / "lab")
    listing = list_images(root, seed=0)
    odd = [file for file in listing.files.tolist() if file.startswith("eosinophil/caf")]
    assert odd == ["eosinophil/caf\udce9_1.png"] and (listing.root / odd[0]).is_file()  # the real name
    assert len(fingerprint(root, listing)) == 40
    listing.counts().encode("utf-8")  # what the Data: line prints


def test_a_class_folder_named_not_in_utf8_is_one_line(tmp_path):
    """A class name is recorded in the model: escaped bytes there would be a name nobody wrote."""
    tiny(Path(os.fsdecode(os.fsencode(tmp_path / "lab") + b"/\xc9osinophile")), 10, 60)
    tiny(tmp_path / "lab" / "neutrophil", 10, 200)
    refused(lambda: list_images(tmp_path / "lab"), "'\\udcc9osinophile' is not UTF-8 text", "rename its folder")


@pytest.mark.slow
def test_a_file_name_not_utf8_trains_through_the_command(tmp_path, command):
    root = not_utf8_folder(tmp_path / "lab")
    trained = command("keras_blood.train", str(write_config(tmp_path, root)))
    assert trained.returncode == 0, trained.stderr[-3000:]
    found = re.search(r"train (\d+), val (\d+), test (\d+) images", data_line(trained.stdout))
    assert sum(map(int, found.groups())) == 21, trained.stdout  # the odd name too

    from keras_blood.config.schema import DataConfig
    from keras_blood.data import load_data

    data = load_data(DataConfig(name="image_folder", root=root, tfds_dir=tmp_path / "tfds", image_size=8), seed=0)
    files = [file for split in data.splits.values() for file in split.files.tolist()]
    assert str(root / "eosinophil" / "caf\\xe9_1.png") in files  # shown escaped, as a report prints it


# ----------------------------------------------------------------------------- 3. line breaks in a list


@pytest.mark.parametrize("row", ['a/slide0_0.png,"NEUTRO\nCYTE"', '"a/slide0_\n0.png",eosinophil'])
def test_a_list_cell_with_a_line_break_is_one_line_naming_the_list_line(tmp_path, row):
    tiny(tmp_path / "a", 10, 60)
    tiny(tmp_path / "b", 10, 200)
    rows = (
        [row]
        + [f"a/slide{i}_{i}.png,eosinophil" for i in range(1, 10)]
        + [f"b/slide{i}_{i}.png,lymphocyte" for i in range(10)]
    )
    (tmp_path / "list.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    refused(lambda: list_images(tmp_path / "list.csv"), "list.csv, line 2", "line break", "one line")


def test_a_class_folder_with_a_line_break_is_one_line(tmp_path):
    tiny(tmp_path / "lab" / "NEUTRO\nCYTE", 10, 60)
    tiny(tmp_path / "lab" / "eosinophil", 10, 200)
    refused(lambda: list_images(tmp_path / "lab"), "NEUTRO\\nCYTE", "line break", "rename")


# ----------------------------------------------------------------------------- 4. aliases


@pytest.mark.parametrize(
    "classes, aliases, expected",
    [
        (
            ["neutrophil", "lymphocyte"],
            {"neutrophil": ["NEU"], "lymphocyte": ["NEU"]},
            ["'NEU'", "'neutrophil'", "'lymphocyte'"],
        ),
        (None, {"neutrophil": ["NEU"], "lymphocyte": ["neu"]}, ["'neu'", "'neutrophil'", "'lymphocyte'"]),
        (
            ["neutrophil", "lymphocyte"],
            {"neutrophil": ["lymphocyte"]},
            ["'lymphocyte'", "'neutrophil'", "class of its own"],
        ),
        (None, {"neutrophil": ["NEU"], "lymphocyte": ["Neutrophil"]}, ["'Neutrophil'", "'neutrophil'", "'lymphocyte'"]),
    ],
)
def test_an_alias_of_two_classes_is_one_line_naming_both(classes, aliases, expected):
    refused(lambda: ClassNames(classes, aliases), "data.class_aliases", *expected)


def test_an_alias_of_a_model_class_is_refused_for_evaluate(tmp_path):
    tiny(tmp_path / "other" / "lymphocyte", 3, 60)
    tiny(tmp_path / "other" / "neutrophil", 3, 200)
    version = fake_version(tmp_path / "version", ["lymphocyte", "neutrophil"])
    config = SimpleNamespace(data=SimpleNamespace(class_aliases={"neutrophil": ["lymphocyte"]}))
    refused(lambda: lab_listing(version, tmp_path / "other", config), "'lymphocyte'", "'neutrophil'")


# ----------------------------------------------------------------------------- 5. hidden files, symlinks


def test_hidden_files_are_counted_and_linked_subfolders_read_once(tmp_path):
    root = tmp_path / "lab"
    tiny(root / "eosinophil", 10, 60)
    tiny(root / "neutrophil", 10, 200)
    (root / "eosinophil" / ".DS_Store").write_bytes(b"\0\1")
    tiny(root / "eosinophil", 1, 60, names=["._slide0_0.png"])  # macOS's resource fork of a file
    tiny(root / "neutrophil" / ".thumbnails", 2, 200)
    # A slide stored elsewhere, linked in; and links that would list files twice or loop.
    tiny(tmp_path / "store" / "slide9", 3, 200, names=["a.png", "b.png", "c.png"])
    (root / "neutrophil" / "slide9").symlink_to(tmp_path / "store" / "slide9")
    (root / "neutrophil" / "slide9 again").symlink_to(tmp_path / "store" / "slide9")  # read after slide9
    (root / "neutrophil" / "loop").symlink_to(root / "neutrophil")
    (root / "neutrophil" / "up").symlink_to(root)
    (root / "eosinophil" / "neutrophils").symlink_to(root / "neutrophil")
    listing = list_images(root, seed=0)
    assert sorted(f for f in listing.files.tolist() if "/slide9/" in f) == [f"neutrophil/slide9/{n}.png" for n in "abc"]
    assert len(listing) == 23
    assert listing.left_out == {"hidden files": 2, "hidden folders": 1, "linked folders listed already": 4}
    assert "hidden files (2)" in listing.counts()


# ----------------------------------------------------------------------------- 6. misleading messages


def test_a_class_of_data_classes_without_a_folder_names_it_and_what_was_found(tmp_path):
    tiny(tmp_path / "lab" / "NEU", 10, 200)
    tiny(tmp_path / "lab" / "EOS", 10, 60)
    refused(
        lambda: list_images(tmp_path / "lab", classes=["neutrophil", "eosinophil"]),
        (
            "class 'neutrophil' has no images in any file: no class folder or list label is named so "
            "(found ['EOS', 'NEU'])"
        ),
        "map one onto it with data.class_aliases",
    )
    refused(
        lambda: list_images(tmp_path / "lab", classes=["NEU", "EOS", "basophil"]),
        "class 'basophil' has no images in any file: no class",
    )


def test_names_with_a_trailing_space_match(tmp_path):
    tiny(tmp_path / "lab" / "Neutrophil ", 12, 200)
    tiny(tmp_path / "lab" / "eosinophil", 12, 60)
    assert list_images(tmp_path / "lab").class_names == ["eosinophil", "Neutrophil"]
    assert list_images(tmp_path / "lab", classes=["neutrophil ", "eosinophil"]).class_names == [
        "neutrophil",
        "eosinophil",
    ]


@pytest.mark.slow
def test_names_with_a_trailing_space_train_through_the_command(tmp_path, command):
    tiny(tmp_path / "lab" / "Neutrophil ", 12, 200)
    tiny(tmp_path / "lab" / "eosinophil", 12, 60)
    config = write_config(tmp_path, tmp_path / "lab", classes=["neutrophil ", "eosinophil"])
    trained = command("keras_blood.train", str(config))
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert "2 classes ['neutrophil', 'eosinophil']" in data_line(trained.stdout)
    version = Path(trained.stdout.strip().splitlines()[-1])
    recorded = json.loads((version / "assets.extra" / "signature.json").read_text())["class_names"]
    assert recorded == ["neutrophil", "eosinophil"]


@pytest.mark.parametrize("row", ["a", "a/", "folder.png"])
def test_a_list_row_naming_a_folder_says_so(tmp_path, row):
    tiny(tmp_path / "a", 10, 60)
    tiny(tmp_path / "b", 10, 200)
    (tmp_path / "folder.png").mkdir()
    rows = (
        [f"{row},eosinophil"]
        + [f"a/slide{i}_{i}.png,eosinophil" for i in range(10)]
        + [f"b/slide{i}_{i}.png,lymphocyte" for i in range(10)]
    )
    (tmp_path / "list.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    refused(lambda: list_images(tmp_path / "list.csv"), "list.csv, line 2", "is a folder", "a row names one image file")


@pytest.mark.parametrize("value", ["data.root=", "data.root=''", "data.root=' '"])
def test_an_empty_data_root_is_one_line(value):
    refused(
        lambda: load_config(REPO / "configs" / "image_folder.yaml", [value]),
        "data.root = ",
        "the path is empty",
        kind=ConfigError,
    )


def test_an_empty_data_root_stops_train_in_one_line(tmp_path, command):
    result = command("keras_blood.train", str(REPO / "configs" / "image_folder.yaml"), "--set", "data.root=")
    assert result.returncode == 2 and len(command_lines(result.stderr)) == 1 and "the path is empty" in result.stderr, (
        result.stderr
    )


# ----------------------------------------------------------------------------- 7. group_pattern


def test_a_group_pattern_with_a_nested_quantifier_is_refused_at_once(tmp_path):
    tiny(tmp_path / "lab" / "a", 10, 60)
    tiny(tmp_path / "lab" / "b", 10, 200)
    tiny(tmp_path / "lab" / "a", 1, 60, names=["a" * 40 + "b.png"])  # 2**40 ways to fail (a+)+$
    for pattern in ("(a+)+$", r"((?:\w+_)*)\d", r"(x|(?:ab+){2,})"):
        start = time.perf_counter()
        refused(
            lambda pattern=pattern: list_images(tmp_path / "lab", group_pattern=pattern),
            "data.group_pattern",
            "nested",
            "quantifier",
        )
        assert time.perf_counter() - start < 1.0
    for pattern in (r"(slide\d+)_", r"^([^_/]+)_", r"([^/]+/_\d+)_", r"(a+)?b", r"((?:ab){2})"):
        list_images(tmp_path / "lab", group_pattern=pattern)


# ----------------------------------------------------------------------------- 8. duplicate rows


def test_a_row_listed_twice_is_kept_once_and_counted(tmp_path):
    tiny(tmp_path / "a", 10, 60)
    tiny(tmp_path / "b", 10, 200)
    rows = [f"a/slide{i}_{i}.png,eosinophil" for i in range(10)] + [f"b/slide{i}_{i}.png,lymphocyte" for i in range(10)]
    rows += ["a/slide3_3.png,Eosinophil", "./b/slide4_4.png,lymphocyte"]
    (tmp_path / "list.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    listing = list_images(tmp_path / "list.csv", seed=0)
    assert len(listing) == 20 and len(set(listing.files.tolist())) == 20
    assert listing.left_out == {"duplicate rows": 2} and "duplicate rows (2)" in listing.counts()


def test_a_file_listed_with_two_labels_is_one_line_naming_both(tmp_path):
    tiny(tmp_path / "a", 10, 60)
    tiny(tmp_path / "b", 10, 200)
    rows = [f"a/slide{i}_{i}.png,eosinophil" for i in range(10)] + [f"b/slide{i}_{i}.png,lymphocyte" for i in range(10)]
    rows.append("a/slide3_3.png,lymphocyte")
    (tmp_path / "list.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    refused(
        lambda: list_images(tmp_path / "list.csv"), "a/slide3_3.png", "lines 5 and 22", "'eosinophil'", "'lymphocyte'"
    )


def test_a_folder_too_small_to_draw_its_splits_is_one_line_naming_it(tmp_path):
    from tests.helpers import lab_folder

    lab_folder(tmp_path / "lab", per_class=3)  # scikit-learn's own ValueError before
    refused(
        lambda: list_images(tmp_path / "lab"),
        f"{tmp_path / 'lab'}: every class has fewer than 5 images (at most 3)",
        "add images, or give train/validation/test folders",
    )
