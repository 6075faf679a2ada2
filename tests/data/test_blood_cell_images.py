"""The Kaggle image-folder source: layout, source-grouped validation, classes, broken files."""

from pathlib import Path

import numpy as np
import pytest

from keras_blood.config.schema import DataConfig
from keras_blood.data import load_data
from keras_blood.data.sources.blood_cell_images.builder import SOURCE_PATTERN
from keras_blood.errors import ConfigError, DataError
from tests.helpers import kaggle_tree, synthetic_npz

CLASSES = ["EOSINOPHIL", "LYMPHOCYTE", "MONOCYTE", "NEUTROPHIL"]
LAYOUT = {
    "TRAIN": {"EOSINOPHIL": 10, "LYMPHOCYTE": 5, "MONOCYTE": 4, "NEUTROPHIL": 20},
    "TEST": {name: 2 for name in CLASSES},
}


def sources(split) -> set[str]:
    """``<class folder>/<source index>`` of every image of a split."""
    return {f"{Path(f).parent.name}/{SOURCE_PATTERN.match(Path(f).name).group(1)}" for f in split.files}


def config(root, **kwargs) -> DataConfig:
    return DataConfig(name="blood_cell_images", root=root, **kwargs)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return kaggle_tree(tmp_path_factory.mktemp("kaggle"), LAYOUT)


def test_reads_the_folder_layout_at_a_non_square_size(folder):
    data = load_data(config(folder, image_size=[12, 20]))
    assert data.class_names == CLASSES  # from the folder names, sorted
    assert data.image_shape == (12, 20, 3)
    assert set(data.splits) == {"train", "val", "test"}  # no TEST_SIMPLE here
    assert len(data.splits["train"]) + len(data.splits["val"]) == 3 * sum(LAYOUT["TRAIN"].values())
    assert len(data.splits["test"]) == 3 * 8
    for split in data.splits.values():
        assert split.images.dtype == np.uint8 and split.labels.dtype == np.int32
        # The label is the folder the file sits in.
        assert [CLASSES[k] for k in split.labels] == [Path(f).parent.name for f in split.files]
    # RGB order, colours kept: the synthetic classes grow bluer and less red (conftest).
    test = data.splits["test"]
    red, blue = ([test.images[test.labels == k][..., c].mean() for k in range(4)] for c in (0, 2))
    assert blue == sorted(blue) and red == sorted(red, reverse=True)


def test_default_size_is_120x160(folder):
    assert load_data(config(folder)).image_shape == (120, 160, 3)


@pytest.mark.parametrize("fraction", [0.2, 0.5])
def test_validation_is_carved_by_source_per_class_and_seeded(folder, fraction):
    data = load_data(config(folder, val_fraction=fraction), seed=3)
    train, val = sources(data.splits["train"]), sources(data.splits["val"])
    assert not train & val  # augmentations of one cell never sit on both sides
    for name, count in LAYOUT["TRAIN"].items():
        held_out = sum(s.startswith(name + "/") for s in val)
        assert held_out == max(1, round(fraction * count)), name  # stratified by class
    again = load_data(config(folder, val_fraction=fraction), seed=3)
    other = load_data(config(folder, val_fraction=fraction), seed=4)
    assert sources(again.splits["val"]) == val
    assert sources(other.splits["val"]) != val


def test_classes_restrict_and_relabel_in_the_given_order(folder):
    data = load_data(config(folder, classes=["neutrophil", "EOSINOPHIL"]))
    assert data.class_names == ["NEUTROPHIL", "EOSINOPHIL"]  # the source's spelling
    for split in data.splits.values():
        folders = [Path(f).parent.name for f in split.files]
        assert set(folders) == {"NEUTROPHIL", "EOSINOPHIL"}
        assert [data.class_names[k] for k in split.labels] == folders


def test_unknown_classes_are_named_with_the_allowed_ones(folder):
    with pytest.raises(ConfigError) as info:
        load_data(config(folder, classes=["neutrophil", "basophil"]))
    assert "['basophil']" in str(info.value)
    for name in CLASSES:
        assert name in str(info.value)


def test_classes_restrict_bloodmnist_too(tmp_path):
    synthetic_npz(tmp_path / "bloodmnist.npz")
    white = ["eosinophil", "lymphocyte", "monocyte", "neutrophil"]
    data = load_data(DataConfig(root=tmp_path, download=False, classes=white))
    assert data.class_names == white
    full = load_data(DataConfig(root=tmp_path, download=False))
    for name, split in data.splits.items():
        keep = np.isin(full.splits[name].labels, [1, 4, 5, 6])
        np.testing.assert_array_equal(split.images, full.splits[name].images[keep])
        np.testing.assert_array_equal(split.labels, np.searchsorted([1, 4, 5, 6], full.splits[name].labels[keep]))
    with pytest.raises(ConfigError, match="'platelets'.*'platelet'"):
        load_data(DataConfig(root=tmp_path, download=False, classes=["platelets", "basophil"]))


def test_max_examples_caps_each_split_before_decoding(folder):
    data = load_data(config(folder, max_examples=7), seed=1)
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 7, "val": 7, "test": 7}
    assert not sources(data.splits["train"]) & sources(data.splits["val"])


def test_test_simple_is_an_extra_split(tmp_path):
    root = kaggle_tree(
        tmp_path,
        {**LAYOUT, "TEST_SIMPLE": {"MONOCYTE": 2, "EOSINOPHIL": 1, "LYMPHOCYTE": 1, "NEUTROPHIL": 1}},
        per_source=1,
    )
    data = load_data(config(root))
    assert len(data.splits["test_simple"]) == 5
    assert np.bincount(data.splits["test_simple"].labels).tolist() == [1, 1, 2, 1]


@pytest.fixture
def broken(tmp_path) -> Path:
    root = kaggle_tree(tmp_path, LAYOUT, per_source=1)
    (root / "TRAIN" / "MONOCYTE" / "_9_1.jpeg").write_bytes(b"not a jpeg")
    (root / "TEST" / "LYMPHOCYTE" / "notes.txt").write_text("hello")
    (root / "TRAIN" / "MONOCYTE" / ".DS_Store").write_bytes(b"\0\1")  # hidden: never read
    return root


def test_unreadable_files_are_named(broken):
    with pytest.raises(DataError) as info:
        load_data(config(broken))
    message = str(info.value)
    assert "_9_1.jpeg" in message and "2 such file(s)" in message
    assert "skip_unreadable" in message


def test_unreadable_files_can_be_skipped_with_a_count(broken, capsys):
    data = load_data(config(broken, skip_unreadable=True))
    err = capsys.readouterr().err
    assert "skipped 2 of" in err and "notes.txt" in err
    files = [Path(f).name for split in data.splits.values() for f in split.files]
    assert "_9_1.jpeg" not in files and "notes.txt" not in files
    assert len(files) == sum(LAYOUT["TRAIN"].values()) + 8


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda root: (root / "TEST").rename(root / "test-set"), "no TEST/ folder"),
        (lambda root: (root / "TEST" / "BASOPHIL").mkdir(), "TRAIN lacks: ['BASOPHIL']"),
        (lambda root: (root / "TRAIN" / "BASOPHIL").mkdir(), "BASOPHIL holds no files"),
    ],
)
def test_layout_problems_are_clear(tmp_path, change, message):
    root = kaggle_tree(tmp_path, LAYOUT, per_source=1)
    change(root)
    with pytest.raises(DataError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_data(config(root))


def empty_folder(folder: Path) -> None:
    for file in folder.iterdir():
        file.unlink()
    (folder / ".DS_Store").write_bytes(b"\0")  # hidden: not an image


@pytest.mark.parametrize(
    "layout, change, name, split, cause",
    [
        ({}, lambda root: (root / "TRAIN" / "BASOPHIL").mkdir(), "BASOPHIL", "train", "TRAIN/BASOPHIL holds no files"),
        ({}, lambda root: empty_folder(root / "TEST" / "MONOCYTE"), "MONOCYTE", "test", "TEST/MONOCYTE holds no files"),
        (
            {},
            lambda root: (root / "TEST" / "MONOCYTE").rename(root / "m"),
            "MONOCYTE",
            "test",
            "TEST/MONOCYTE does not exist",
        ),
        (
            {"TEST_SIMPLE": {name: 1 for name in CLASSES[1:]}},
            None,
            "EOSINOPHIL",
            "test_simple",
            "TEST_SIMPLE/EOSINOPHIL does not exist",
        ),
        (
            {"TRAIN": {**LAYOUT["TRAIN"], "MONOCYTE": 1}},
            None,
            "MONOCYTE",
            "val",
            "TRAIN/MONOCYTE holds images of one source cell only",
        ),
    ],
)
def test_a_class_without_examples_in_a_split_is_named(tmp_path, layout, change, name, split, cause):
    root = kaggle_tree(tmp_path, {**LAYOUT, **layout}, per_source=1)
    if change:
        change(root)
    with pytest.raises(DataError) as info:
        load_data(config(root, max_examples=100))  # checked on the full folders, whatever the cap
    message = str(info.value)
    assert message.startswith(f"class {name!r} has no examples in the {split} split: {root / cause}; ")
    assert "data.classes" in message
    # Only the kept classes matter.
    others = [n for n in CLASSES if n != name]
    assert load_data(config(root, classes=others, image_size=[12, 20])).class_names == others


def test_a_small_slice_may_lack_classes_the_folders_have(folder):
    data = load_data(config(folder, max_examples=2, image_size=[12, 20]))
    assert all(len(split) == 2 and len(set(split.labels)) <= 2 for split in data.splits.values())


@pytest.mark.slow
def test_real_kaggle_slice(kaggle_root):
    data = load_data(config(kaggle_root, image_size=[60, 80], max_examples=48), seed=0)
    assert data.class_names == CLASSES
    assert data.image_shape == (60, 80, 3)
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 48, "val": 48, "test": 48, "test_simple": 48}
    assert not sources(data.splits["train"]) & sources(data.splits["val"])


def test_real_kaggle_validation_holds_a_fifth_of_the_sources(kaggle_root):
    """Source counts from the data's README: 75/27/16/159 per class in TRAIN."""
    from keras_blood.data.sources.blood_cell_images.builder import scan, split_by_source

    folder = scan(kaggle_root / "TRAIN", CLASSES)
    assert [len(set(folder.sources[folder.labels == k])) for k in range(4)] == [75, 27, 16, 159]
    train, val = split_by_source(folder, 0.2, seed=42)
    assert not set(folder.sources[train]) & set(folder.sources[val])
    assert [len(set(folder.sources[val][folder.labels[val] == k])) for k in range(4)] == [15, 5, 3, 32]
