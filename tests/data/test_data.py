"""The BloodMNIST source (keras_blood.data.sources.bloodmnist, keras_blood.data.download): the
MedMNIST file read and checked, damaged files named, the download checked and put in place."""

import hashlib

import numpy as np
import pytest

from keras_blood.config.schema import DataConfig
from keras_blood.data import load_data
from keras_blood.data.download import download
from keras_blood.data.sources.bloodmnist import builder as bloodmnist
from keras_blood.errors import DataError
from tests.helpers import synthetic_npz


def test_reads_a_medmnist_file(tmp_path):
    arrays = synthetic_npz(tmp_path / "bloodmnist.npz")
    data = load_data(DataConfig(root=tmp_path, download=False))
    assert data.class_names[3] == "immature granulocyte" and data.num_classes == 8
    assert data.image_shape == (28, 28, 3)
    np.testing.assert_array_equal(data.splits["val"].images, arrays["val_images"])
    np.testing.assert_array_equal(data.splits["val"].labels, arrays["val_labels"].ravel())
    assert data.splits["train"].labels.dtype == np.int32


def test_environment_variable_sets_the_root(tmp_path, monkeypatch):
    synthetic_npz(tmp_path / "bloodmnist.npz")
    monkeypatch.setenv("KERAS_BLOOD_DATA_ROOT", str(tmp_path))
    assert len(load_data(DataConfig(download=False)).splits["test"]) == 16


def test_max_examples_caps_every_split_with_a_seeded_sample(tmp_path):
    synthetic_npz(tmp_path / "bloodmnist.npz", n=(64, 32, 32))
    a = load_data(DataConfig(root=tmp_path, max_examples=20), seed=1)
    b = load_data(DataConfig(root=tmp_path, max_examples=20), seed=1)
    assert {k: len(v) for k, v in a.splits.items()} == {"train": 20, "val": 20, "test": 20}
    np.testing.assert_array_equal(a.splits["train"].labels, b.splits["train"].labels)
    assert len(set(a.splits["train"].labels)) > 1


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d.pop("val_labels"), "missing array 'val_labels'"),
        (lambda d: d.update(train_images=d["train_images"].astype(np.float32)), "expected uint8"),
        (lambda d: d.update(test_labels=d["test_labels"] + 8), "expected 0..7"),
        (lambda d: d.update(test_labels=d["test_labels"][:3]), "labels"),
    ],
)
def test_malformed_files_are_named_with_the_problem(tmp_path, change, message):
    arrays = synthetic_npz(tmp_path / "bloodmnist.npz")
    change(arrays)
    np.savez(tmp_path / "bloodmnist.npz", **arrays)
    with pytest.raises(DataError, match=message) as info:
        load_data(DataConfig(root=tmp_path, download=False))
    assert "bloodmnist.npz" in str(info.value)


def corrupt_member_data(path, array: np.ndarray) -> None:
    """Flip bytes inside ``array``'s data as np.savez stored it (uncompressed, so verbatim):
    the zip's directory stays intact, so np.load succeeds and reading the array fails."""
    data = bytearray(path.read_bytes())
    start = data.index(array.tobytes())
    data[start + 100 : start + 104] = bytes(b ^ 0xFF for b in data[start + 100 : start + 104])
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["crc", "object array"])
def test_damaged_arrays_name_the_file_the_array_and_the_fix(tmp_path, damage):
    path = tmp_path / "bloodmnist.npz"
    arrays = synthetic_npz(path)
    if damage == "crc":
        corrupt_member_data(path, arrays["val_images"])
        reason = "Bad CRC-32"
    else:
        np.savez(path, **{**arrays, "val_images": np.array([[1, "a"]], dtype=object)})
        reason = "allow_pickle"
    assert np.load(path).files  # the damage shows only when the array is read
    with pytest.raises(DataError) as info:
        load_data(DataConfig(root=tmp_path, download=False))
    message = str(info.value)
    for fragment in (str(path), "'val_images'", reason, "delete it and re-run", "data.root"):
        assert fragment in message
    assert "\n" not in message


def test_a_class_missing_from_a_split_of_the_file_is_named(tmp_path):
    arrays = synthetic_npz(tmp_path / "bloodmnist.npz")
    keep = arrays["test_labels"].ravel() != 7  # no platelet in test
    np.savez(
        tmp_path / "bloodmnist.npz",
        **{**arrays, "test_images": arrays["test_images"][keep], "test_labels": arrays["test_labels"][keep]},
    )
    with pytest.raises(DataError) as info:
        load_data(DataConfig(root=tmp_path, download=False, max_examples=1000))
    assert "no examples of class 'platelet' in test" in str(info.value)
    assert "bloodmnist.npz" in str(info.value) and "data.classes" in str(info.value)
    # Only the kept classes matter.
    kept = load_data(DataConfig(root=tmp_path, download=False, classes=["basophil", "eosinophil"]))
    assert set(kept.splits["test"].labels) == {0, 1}


def test_a_small_slice_may_lack_classes_the_file_has(tmp_path):
    synthetic_npz(tmp_path / "bloodmnist.npz")
    data = load_data(DataConfig(root=tmp_path, download=False, max_examples=3))
    assert all(len(set(split.labels)) <= 3 for split in data.splits.values())


def test_size_mismatch_is_reported(tmp_path):
    synthetic_npz(tmp_path / "bloodmnist_64.npz", size=28)
    with pytest.raises(DataError, match="data.image_size=64"):
        load_data(DataConfig(root=tmp_path, image_size=64, download=False))


def test_missing_file_without_download_says_where_to_get_it(tmp_path):
    with pytest.raises(DataError) as info:
        load_data(DataConfig(root=tmp_path / "empty", download=False))
    assert bloodmnist.MD5[28] in str(info.value) and "zenodo.org" in str(info.value)
    assert not (tmp_path / "empty").exists()


def test_unreachable_download_fails_fast_and_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(bloodmnist, "RECORD", "http://127.0.0.1:9/files")  # nothing listens
    root, tfds_dir = tmp_path / "new" / "root", tmp_path / "new" / "tfds"
    with pytest.raises(DataError) as info:
        load_data(DataConfig(root=root, tfds_dir=tfds_dir))
    message = str(info.value)
    for fragment in ("bloodmnist.npz", "http://127.0.0.1:9/files", bloodmnist.MD5[28], "data.root"):
        assert fragment in message
    assert not (tmp_path / "new").exists()  # neither the download folder nor TFDS's


def test_download_checks_md5_and_moves_into_place(tmp_path):
    source = tmp_path / "source.bin"
    source.write_bytes(b"blood" * 1000)
    good = hashlib.md5(source.read_bytes()).hexdigest()
    dest = tmp_path / "out" / "file.bin"
    with pytest.raises(DataError, match="MD5"):
        download(source.as_uri(), dest, "0" * 32, "save it as DEST")
    assert not dest.exists() and not (tmp_path / "out").exists()
    assert download(source.as_uri(), dest, good, "save it as DEST") == dest
    assert dest.read_bytes() == source.read_bytes()
    assert [p.name for p in dest.parent.iterdir()] == ["file.bin"]  # no .part left over


@pytest.mark.slow
def test_real_bloodmnist_matches_the_published_layout(bloodmnist_root):
    data = load_data(DataConfig(root=bloodmnist_root))
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 11959, "val": 1712, "test": 3421}
    counts = np.bincount(data.splits["train"].labels, minlength=8)
    assert counts.tolist() == [852, 2181, 1085, 2026, 849, 993, 2330, 1643]
