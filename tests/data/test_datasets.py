"""The TFDS builders (keras_blood.data.builders): what a plain TFDS user gets, bad input, a killed
prepare, no network; on the real data, the very arrays keras-blood read before them."""

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

import keras_blood.data.builders  # noqa: F401  (registers the builders)
from keras_blood.config.cli import run_main
from keras_blood.config.schema import DataConfig
from keras_blood.data import load_data
from keras_blood.data.sources.blood_cell_images.builder import SOURCE_PATTERN, make_config, scan, split_by_source
from keras_blood.data.sources.bloodmnist import builder as bloodmnist
from tests.helpers import REPO, kaggle_tree, synthetic_npz

LAYOUT = {
    "TRAIN": {"EOSINOPHIL": 5, "LYMPHOCYTE": 3, "MONOCYTE": 2, "NEUTROPHIL": 4},
    "TEST": {name: 2 for name in ("EOSINOPHIL", "LYMPHOCYTE", "MONOCYTE", "NEUTROPHIL")},
    "TEST_SIMPLE": {name: 1 for name in ("EOSINOPHIL", "LYMPHOCYTE", "MONOCYTE", "NEUTROPHIL")},
}


def manual(folder: Path) -> dict:
    """tfds.load's way to name the manual folder."""
    return {"download_config": tfds.download.DownloadConfig(manual_dir=str(folder))}


def test_bloodmnist_with_plain_tfds(tmp_path, capsys):
    (tmp_path / "manual").mkdir()
    arrays = synthetic_npz(tmp_path / "manual" / "bloodmnist.npz")
    splits = tfds.load(
        "bloodmnist/28",
        split=["train", "validation", "test"],
        as_supervised=True,
        batch_size=-1,
        data_dir=tmp_path / "tfds",
        download_and_prepare_kwargs=manual(tmp_path / "manual"),
    )
    for (images, labels), name in zip(tfds.as_numpy(splits), ("train", "val", "test")):
        np.testing.assert_array_equal(images, arrays[f"{name}_images"])  # in the file's order
        np.testing.assert_array_equal(labels, arrays[f"{name}_labels"].ravel())
    # The synthetic file is not the official one: accepted, with both MD5s named.
    md5 = bloodmnist.md5sum(tmp_path / "manual" / "bloodmnist.npz")
    assert f"has MD5 {md5}, not the official {bloodmnist.MD5[28]}" in capsys.readouterr().err

    info = tfds.builder("bloodmnist/28", data_dir=tmp_path / "tfds").info
    assert info.features["label"].names == bloodmnist.CLASS_NAMES
    assert "MedMNIST v2" in info.citation and "Acevedo" in info.citation
    assert info.supervised_keys == ("image", "label") and info.metadata["md5"] == md5
    assert set(tfds.builder_cls("bloodmnist").builder_configs) == {"28", "64", "128", "224"}


def test_blood_cell_images_with_plain_tfds(tmp_path):
    root = kaggle_tree(tmp_path / "images", LAYOUT)
    (root / "TRAIN" / "MONOCYTE" / ".DS_Store").write_bytes(b"\0\1")  # hidden: never read
    builder = tfds.builder("blood_cell_images", data_dir=tmp_path / "tfds")
    assert builder.builder_config.name == "seed42-val0.2"
    builder.download_and_prepare(download_config=manual(root)["download_config"])
    assert builder.info.features["label"].names == sorted(LAYOUT["TRAIN"])
    splits = tfds.as_numpy(builder.as_dataset(batch_size=-1))
    assert {name: len(split["label"]) for name, split in splits.items()} == {
        "train": 3 * 14 - 3 * 4,
        "validation": 3 * 4,
        "test": 3 * 8,
        "test_simple": 3 * 4,
    }
    train, val = ({s.decode() for s in splits[name]["source"]} for name in ("train", "validation"))
    assert not train & val and len(val) == 4  # one source cell per class held out
    assert splits["test"]["image"].shape == (24, 30, 40, 3)  # the JPEGs, decoded
    files = [f.decode() for split in splits.values() for f in split["file"]]
    assert files[0].startswith("TRAIN/EOSINOPHIL/_") and not any(".DS_Store" in f for f in files)


@pytest.mark.slow
def test_a_prepared_copy_needs_neither_keras_blood_nor_a_network(tmp_path):
    """Prepare and load both sources as keras-blood does, then read the copies back with
    plain TFDS in a process where keras_blood cannot be imported; socket connects to anything
    but loopback are refused and listed, and, where strace works, so is every connect() at
    the C level (TensorFlow's GCS file system)."""
    synthetic_npz(tmp_path / "bloodmnist.npz")
    kaggle_tree(tmp_path / "images", LAYOUT, per_source=1)
    guard = """
        import socket
        attempts = []
        def connect(sock, address, *args):
            if sock.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in ("127.0.0.1", "::1"):
                attempts.append(address)
                raise OSError("network blocked by the test")
            return connect_ok(sock, address, *args)
        connect_ok, socket.socket.connect = socket.socket.connect, connect
        import atexit; atexit.register(lambda: print("CONNECT ATTEMPTS", attempts))
    """
    prepare = (
        guard
        + """
        from keras_blood.config.schema import DataConfig
        from keras_blood.data import load_data
        load_data(DataConfig(root="{tmp}", tfds_dir="{tmp}/tfds"))
        load_data(DataConfig(name="blood_cell_images", root="{tmp}/images", tfds_dir="{tmp}/tfds"), 42)
        import tensorflow_datasets as tfds
        tfds.load("bloodmnist/28", data_dir="{tmp}/tfds")  # TFDS's defaults: try_gcs and all
    """
    )
    read = (
        guard
        + """
        import sys
        sys.modules["keras_blood"] = None  # any import of it fails
        import tensorflow_datasets as tfds
        for copy in ("bloodmnist/28/1.0.0", "blood_cell_images/seed42-val0.2/1.0.0"):
            builder = tfds.builder_from_directory("{tmp}/tfds/" + copy)
            counts = {{k: v.num_examples for k, v in builder.info.splits.items()}}
            print(copy, counts, builder.info.features["label"].names)
            next(iter(builder.as_dataset(split="test", as_supervised=True)))
    """
    )
    trace = ["strace", "-f", "-qq", "--seccomp-bpf", "-e", "trace=connect"]
    if not shutil.which("strace") or subprocess.run([*trace, "-o", os.devnull, "true"], capture_output=True).returncode:
        trace = []  # no strace, or no ptrace here (inside strace itself, say): the guard alone
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    outputs = []
    for script, cwd, pythonpath in ((prepare, REPO, str(REPO)), (read, tmp_path, "")):
        log = tmp_path / f"connect-{len(outputs)}.log"
        command = [
            *trace,
            *(["-o", str(log)] if trace else []),
            sys.executable,
            "-c",
            textwrap.dedent(script).format(tmp=tmp_path),
        ]
        proc = subprocess.run(
            command, cwd=cwd, env={**env, "PYTHONPATH": pythonpath}, capture_output=True, text=True, timeout=300
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "CONNECT ATTEMPTS []" in proc.stdout, proc.stdout
        if trace:
            lines = log.read_text().splitlines()
            network = [line for line in lines if "AF_INET" in line and "127.0.0.1" not in line and "::1" not in line]
            assert not network, network
        outputs.append(proc.stdout)
    assert "bloodmnist/28/1.0.0 {'train': 40, 'validation': 16, 'test': 16}" in outputs[1]
    assert "['EOSINOPHIL', 'LYMPHOCYTE', 'MONOCYTE', 'NEUTROPHIL']" in outputs[1]


@pytest.mark.slow
def test_a_killed_prepare_is_prepared_again_cleanly(tmp_path):
    arrays = synthetic_npz(tmp_path / "bloodmnist.npz", n=(200, 16, 16))
    killer = textwrap.dedent(f"""
        import os, signal
        from keras_blood.config.schema import DataConfig
        from keras_blood.data import load_data
        from keras_blood.data.sources.bloodmnist.builder import Bloodmnist
        examples = Bloodmnist._generate_examples
        def killed_halfway(self, images, labels):
            for i, example in enumerate(examples(self, images, labels)):
                if i == 100:
                    os.kill(os.getpid(), signal.SIGKILL)
                yield example
        Bloodmnist._generate_examples = killed_halfway
        load_data(DataConfig(root="{tmp_path}", tfds_dir="{tmp_path}/tfds"))
    """)
    proc = subprocess.run(
        [sys.executable, "-c", killer],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == -9, proc.stderr[-3000:]
    config_dir = tmp_path / "tfds" / "bloodmnist" / "28"
    assert [p.name[:11] for p in config_dir.iterdir()] == ["incomplete."]  # what the kill left
    data = load_data(DataConfig(root=tmp_path, tfds_dir=tmp_path / "tfds"))
    np.testing.assert_array_equal(data.splits["train"].images, arrays["train_images"])
    assert [p.name for p in config_dir.iterdir()] == ["1.0.0"]


def test_a_changed_source_is_prepared_again(tmp_path, capsys):
    for name, seed in (("a", 0), ("b", 1)):
        (tmp_path / name).mkdir()
        synthetic_npz(tmp_path / name / "bloodmnist.npz", seed=seed)
    first = load_data(DataConfig(root=tmp_path / "a")).splits["test"].images
    second = load_data(DataConfig(root=tmp_path / "b")).splits["test"].images
    np.testing.assert_array_equal(second, np.load(tmp_path / "b" / "bloodmnist.npz")["test_images"])
    assert not np.array_equal(first, second)
    assert "again (its source changed)" in capsys.readouterr().out
    # Unchanged: reused, and read from the memo.
    assert load_data(DataConfig(root=tmp_path / "b")).splits["test"].images is second


def test_bad_input_is_one_line_and_exit_2_with_nothing_written(tmp_path, capsys):
    tfds_dir = tmp_path / "tfds"

    def load(**kwargs):
        return lambda argv: load_data(DataConfig(tfds_dir=tfds_dir, **kwargs))

    (tmp_path / "manual").mkdir()
    assert run_main(load(root=tmp_path / "manual", download=False)) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path / 'manual' / 'bloodmnist.npz'} does not exist") and err.count("\n") == 1
    (tmp_path / "manual" / "bloodmnist.npz").write_bytes(b"not a zip")
    assert run_main(load(root=tmp_path / "manual")) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[-1].startswith("error: ") and "not a readable .npz file" in err[-1]
    root = kaggle_tree(tmp_path / "images", LAYOUT, per_source=1)
    jpeg = next((root / "TEST" / "MONOCYTE").iterdir())
    jpeg.write_bytes(jpeg.read_bytes()[:400])  # a valid header: only decoding all of it fails
    assert run_main(load(name="blood_cell_images", root=root)) == 2
    err = capsys.readouterr().err.splitlines()[-1]
    assert (
        err == f"error: {jpeg}: not a readable image (corrupt or truncated image (jpeg::Uncompress failed. "
        "Invalid JPEG data or crop window)); 1 such file(s) in all. Remove them or set data.skip_unreadable: true"
    )
    assert not tfds_dir.exists()  # no half-written copy, nor the folders on the way


def test_real_bloodmnist_is_the_file_byte_for_byte(bloodmnist_root):
    data = load_data(DataConfig(root=bloodmnist_root))
    with np.load(bloodmnist_root / "bloodmnist.npz") as arrays:  # how keras-blood read it before
        for name, split in data.splits.items():
            np.testing.assert_array_equal(split.images, arrays[f"{name}_images"])
            np.testing.assert_array_equal(split.labels, arrays[f"{name}_labels"].ravel().astype(np.int32))


def read_before(root: Path, size: tuple[int, int], seed: int, fraction: float) -> dict:
    """keras-blood's reading of the folders before the builder: each file decoded from its
    path, resized (area), rounded; validation carved from TRAIN by source."""
    names = sorted(p.name for p in (root / "TRAIN").iterdir())
    train = scan(root / "TRAIN", names)
    train_idx, val_idx = split_by_source(train, fraction, seed)
    folders = {
        "train": train.take(train_idx),
        "val": train.take(val_idx),
        "test": scan(root / "TEST", names),
        "test_simple": scan(root / "TEST_SIMPLE", names),
    }

    def decode(path):
        image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        image = tf.image.resize(image, size, method="area")
        return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8).numpy()

    return {name: (np.stack([decode(p) for p in f.paths]), f.labels, f.paths) for name, f in folders.items()}


def test_real_kaggle_slice_decodes_as_before(kaggle_root, tmp_path):
    """A slice of the folders (up to 8 images of each of 5 source cells per class folder):
    every split's images, labels and files as before, at a non-default size, seed and fraction."""
    for split in ("TRAIN", "TEST", "TEST_SIMPLE"):
        for folder in (kaggle_root / split).iterdir():
            (tmp_path / split / folder.name).mkdir(parents=True)
            by_source = {}
            for file in sorted(folder.iterdir()):
                by_source.setdefault(SOURCE_PATTERN.match(file.name).group(1), []).append(file)
            for source in sorted(by_source)[:5]:
                for file in by_source[source][:8]:
                    (tmp_path / split / folder.name / file.name).symlink_to(file)
    data = load_data(DataConfig(name="blood_cell_images", root=tmp_path, image_size=[60, 80], val_fraction=0.3), seed=7)
    before = read_before(tmp_path, (60, 80), seed=7, fraction=0.3)
    assert set(data.splits) == set(before)
    for name, (images, labels, files) in before.items():
        np.testing.assert_array_equal(data.splits[name].images, images)
        np.testing.assert_array_equal(data.splits[name].labels, labels)
        assert data.splits[name].files.tolist() == files.tolist()
    assert make_config(0.3, 7).name == "seed7-val0.3"
