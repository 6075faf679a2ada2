"""Faults in configs, prepared data and serving, injected: each ends in one line (exit 2),
an error row, or a repaired copy; none in a traceback or a file a later run would trust.

Configs: an alias bomb, values too long to quote, duplicate keys. Data: a prepared TFDS
copy damaged (a shard cut short or deleted, metadata unreadable, a record's CRC) and a
full ``data.tfds_dir``. Serving: a full ``output.publish_dir``, a killed ``export_edge``,
a private umask, images of huge dimensions. The full-disk cases mount a 2 MB tmpfs in a
user and mount namespace (``unshare -rm``) and are skipped where that is not permitted.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import struct
import subprocess
import sys
import textwrap
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import yaml

from keras_blood.config.loading import MAX_YAML_NODES, load_config, load_yaml
from keras_blood.config.paths import weights_kind
from keras_blood.config.quote import MAX_QUOTED
from keras_blood.config.sweep import load_sweep
from keras_blood.data.sources.bloodmnist.builder import CLASS_NAMES
from keras_blood.errors import ConfigError
from keras_blood.files import host_name, make_folders, remove_stale_staging
from tests.helpers import REPO, synthetic_npz

ENV = {**os.environ, "PYTHONPATH": str(REPO)}
MAX_LINE = 10 * (3 * MAX_QUOTED + 400)  # ten problems, each a key, a value and what is wrong


def python(code: str, *args: str, cwd: Path = REPO, timeout: float = 300, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        cwd=cwd,
        env=env or ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def one_error_line(stderr: str) -> str:
    """The one ``error:`` line a command printed, after checking there is no traceback."""
    assert "Traceback" not in stderr, stderr[-3000:]
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stderr[-3000:]
    return errors[0]


# ----------------------------------------------------------------------------- configs


def alias_bomb(levels: int = 9) -> str:
    """A "billion laughs": each line nine aliases of the one before, 9**levels values in
    316 bytes; ``model`` is the last of them."""
    names = "abcdefghijklmnop"
    lines = [f"{names[0]}: &{names[0]} [x,x,x,x,x,x,x,x,x]"]
    lines += [f"{names[i]}: &{names[i]} [{','.join([f'*{names[i - 1]}'] * 9)}]" for i in range(1, levels)]
    return "\n".join([*lines, f"model: *{names[levels - 1]}", ""])


def test_an_alias_bomb_is_one_short_line_quickly_and_in_little_memory(tmp_path):
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(alias_bomb())
    assert len(bomb.read_bytes()) == 316  # 9**9 values in ten lines
    measure = """
        import json, sys, time, tracemalloc
        from keras_blood.config.loading import load_config
        from keras_blood.errors import ConfigError
        start = time.perf_counter()
        tracemalloc.start()  # what loading allocates (a forked child's ru_maxrss holds its parent's)
        try:
            load_config(sys.argv[1])
        except ConfigError as exc:
            message = str(exc)
        print(json.dumps({"seconds": time.perf_counter() - start, "message": message,
                          "peak_mb": tracemalloc.get_traced_memory()[1] / 2**20}))
    """
    proc = python(measure, str(bomb), timeout=60)
    result = json.loads(proc.stdout)
    assert (
        result["message"].startswith(f"{bomb}: the value on line ")
        and f"more than {MAX_YAML_NODES}" in result["message"]
    )
    # No time bound here (timed tests fail on a loaded machine); the process timeout of 60 s
    # bounds it, where the expansion took minutes and gigabytes before.
    assert len(result["message"]) < 300 and result["peak_mb"] < 200, result
    # The command: one line, exit 2, before TensorFlow is loaded.
    proc = subprocess.run(
        [sys.executable, "-m", "keras_blood.train", str(bomb)],
        cwd=tmp_path,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and len(one_error_line(proc.stderr)) < 300 and len(proc.stderr) < 1000
    # The same bomb in one --set value (flow style).
    flow = "[" + ", ".join([f"&a{i} [{', '.join([f'*a{i - 1}'] * 9) if i else 'x'}]" for i in range(9)]) + "]"
    plain = tmp_path / "plain.yaml"
    plain.write_text("model: {name: cnn}\n")
    with pytest.raises(ConfigError, match=r"^--set 'train.epochs=.*: the value: the value on line 1 expands"):
        load_config(plain, [f"train.epochs={flow}"])


@pytest.mark.parametrize(
    "override, expected",
    [
        (f"name={'n' * 100_000}", "name = 'nnn"),  # a long value
        (f"train.{'k' * 100_000}=1", "train.kkk"),  # a long unknown key
        (f"data.classes=[{', '.join(['x'] * 50_000)}]", "data.classes = ['x', 'x'"),  # a long list
        (f"data.classes=[{', '.join(['1'] * 50_000)}]", "; and 49990 more"),  # 50,000 errors: ten shown
        (
            f"seed={'9' * 5000}",
            "not valid YAML: an integer of more digits than Python reads",
        ),  # an int Python will not parse
        ("seed=" + "[" * 5000 + "]" * 5000, "nested too deeply"),
        ("train.epochs=&a [1, *a]", "an alias (*name) inside its own anchor"),
        (f"train.epochs.x={'y' * 100_000}", "--set 'train.epochs.x=yyy"),  # over a value that is no section
        (f"{'k' * 100_000}", "expected KEY=VALUE"),
    ],
    ids=[
        "long value",
        "long key",
        "long list",
        "many errors",
        "huge int",
        "deep nesting",
        "cycle",
        "not a section",
        "no equals sign",
    ],
)
def test_bad_values_are_quoted_in_a_few_hundred_characters(write_config, override, expected):
    path = write_config({"model": {"name": "cnn"}, "train": {"epochs": 2}})
    start = time.perf_counter()
    with pytest.raises(ConfigError) as caught:
        load_config(path, [override])
    message = str(caught.value)
    assert expected in message and "\n" not in message and len(message) < MAX_LINE, message[:3000]
    assert time.perf_counter() - start < 30  # a quadratic check took 60 s on the long list


def test_other_quoted_values_are_short_too(tmp_path, write_config):
    with pytest.raises(ConfigError) as caught:
        weights_kind(str(tmp_path / ("w" * 100_000)))
    assert len(str(caught.value)) < 2 * MAX_QUOTED + 200
    path = write_config({"model": {"name": "cnn"}, "data": {"classes": [f"c{i % 5000}" for i in range(20_000)]}})
    with pytest.raises(ConfigError, match="classes named more than once") as caught:
        load_config(path)
    assert len(str(caught.value)) < MAX_LINE
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({"sweep": {"models": [f"no-such-{i}" for i in range(5000)]}}))
    with pytest.raises(ConfigError, match="and [0-9]+ more") as caught:
        load_sweep(sweep)
    assert "\n" not in str(caught.value) and len(str(caught.value)) < MAX_LINE


def test_duplicate_keys_are_an_error_naming_the_key_and_lines(tmp_path):
    path = tmp_path / "twice.yaml"
    path.write_text("model: {name: cnn}\ntrain:\n  epochs: 3\ndata: {}\ntrain:\n  epochs: 5\n")
    with pytest.raises(
        ConfigError,
        match=rf"^{path}: line 5: key 'train' is given twice in one mapping "
        r"\(first on line 2\); keep one$",
    ):
        load_config(path)
    path.write_text("model: {name: cnn, filters: [8], name: basic}\n")  # in a flow mapping, one line
    with pytest.raises(ConfigError, match=r"line 1: key 'name' is given twice"):
        load_config(path)
    path.write_text("model: {name: cnn}\n")
    with pytest.raises(ConfigError, match=r"--set 'train={epochs: 1, epochs: 2}': the value: line 1: key 'epochs'"):
        load_config(path, ["train={epochs: 1, epochs: 2}"])
    # A key beside a merge overrides the merged one, as YAML means it to: no duplicate.
    merged = load_yaml("base: &base {epochs: 3, batch_size: 8}\ntrain:\n  <<: *base\n  epochs: 4\n", "x")
    assert merged["train"] == {"epochs": 4, "batch_size": 8}


def test_config_files_that_are_no_text_or_too_large_are_one_line(tmp_path):
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00model")
    with pytest.raises(ConfigError, match="not a text file"):
        load_config(binary)
    large = tmp_path / "large.yaml"
    large.write_text("model: {name: cnn}\n" + "# padding\n" * 200_000)
    with pytest.raises(ConfigError, match="a config file is at most"):
        load_config(large)
    syntax = tmp_path / "syntax.yaml"
    syntax.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError) as caught:
        load_config(syntax)
    assert str(caught.value) == (
        f"{syntax}: not valid YAML: line 2, column 1: expected ',' or ']', but got "
        "'<stream end>' (while parsing a flow sequence at line 1, column 8)"
    )


# ----------------------------------------------------------------------------- prepared copies


def prepared_copy(tmp_path: Path, n=(200, 40, 40)) -> tuple[dict, Path, Path]:
    """A synthetic BloodMNIST file prepared in tmp_path/tfds: (arrays, root, copy's folder)."""
    from keras_blood.config.schema import DataConfig
    from keras_blood.data import load_data

    root = tmp_path / "manual"
    root.mkdir()
    arrays = synthetic_npz(root / "bloodmnist.npz", n=n)
    load_data(DataConfig(root=root, tfds_dir=tmp_path / "tfds"))
    return arrays, root, tmp_path / "tfds" / "bloodmnist" / "28" / "1.0.0"


def truncate_shard(copy: Path) -> None:
    shard = next(copy.glob("bloodmnist-train.tfrecord-*"))
    shard.write_bytes(shard.read_bytes()[:-1000])


DAMAGES = {
    "shard cut short": (truncate_shard, "the train split's shards hold"),
    "shard deleted": (lambda copy: next(copy.glob("bloodmnist-test.tfrecord-*")).unlink(), "is missing"),
    "shard emptied": (
        lambda copy: next(copy.glob("bloodmnist-validation.tfrecord-*")).write_bytes(b""),
        "shards hold 0",
    ),
    "dataset_info.json cut": (
        lambda copy: (copy / "dataset_info.json").write_text('{"name": '),
        "dataset_info.json is unreadable",
    ),
    "features.json deleted": (lambda copy: (copy / "features.json").unlink(), "features.json is missing"),
    "labels cut": (
        lambda copy: (copy / "label.labels.txt").write_text("basophil\n"),
        "label.labels.txt names 1 classes",
    ),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_a_damaged_prepared_copy_is_found_and_prepared_again(tmp_path, capsys, damage):
    from keras_blood.config.schema import DataConfig
    from keras_blood.data import load_data
    from keras_blood.data.prepared import damage as damage_of

    arrays, root, copy = prepared_copy(tmp_path)
    assert damage_of(copy) is None  # a fresh copy is intact by the same checks
    harm, why = DAMAGES[damage]
    harm(copy)
    assert why in damage_of(copy)
    capsys.readouterr()
    data = load_data(DataConfig(root=root, tfds_dir=tmp_path / "tfds"))
    out = capsys.readouterr().out
    assert "again (the copy there was damaged: " in out and why in out
    for split in ("train", "val", "test"):
        np.testing.assert_array_equal(data.splits[split].images, arrays[f"{split}_images"])
    assert damage_of(copy) is None


def test_a_damaged_copy_whose_source_is_gone_names_the_folder(tmp_path):
    _, root, copy = prepared_copy(tmp_path)
    truncate_shard(copy)
    (tmp_path / "home").mkdir()
    # No data.root: any prepared copy is taken, or the file downloaded (which is off).
    proc = python(
        """
        import sys
        from keras_blood.config.cli import run_main
        from keras_blood.config.schema import DataConfig
        from keras_blood.data import load_data
        sys.exit(run_main(lambda argv: load_data(DataConfig(tfds_dir=sys.argv[1], download=False))))
        """,
        str(tmp_path / "tfds"),
        env={**ENV, "HOME": str(tmp_path / "home"), "KERAS_BLOOD_DATA_ROOT": ""},
    )
    line = one_error_line(proc.stderr)
    assert proc.returncode == 2 and line.startswith(f"error: the prepared copy in {copy} is damaged (the train split's")
    assert "cannot be prepared again" in line and "bloodmnist.npz does not exist" in line
    assert copy.is_dir()  # left for the user: nothing to make a new one from


def test_a_record_damaged_inside_names_the_folder_to_delete(tmp_path):
    from keras_blood.config.schema import DataConfig
    from keras_blood.data import load_data
    from keras_blood.data.prepared import damage as damage_of
    from keras_blood.data.sources.bloodmnist import loader as bloodmnist
    from keras_blood.errors import DataError

    _, root, copy = prepared_copy(tmp_path)
    shard = next(copy.glob("bloodmnist-train.tfrecord-*"))
    content = bytearray(shard.read_bytes())
    content[len(content) // 2] ^= 0xFF  # same size: only the record's CRC tells
    shard.write_bytes(bytes(content))
    assert damage_of(copy) is None
    bloodmnist.read_splits.cache_clear()  # as a new process would
    with pytest.raises(DataError) as caught:
        load_data(DataConfig(root=root, tfds_dir=tmp_path / "tfds"))
    message = str(caught.value)
    assert message.startswith(f"the prepared copy in {copy} is damaged (") and message.endswith(
        f"delete {copy} and run again: it is prepared again from its source (data.root)"
    )
    assert "\n" not in message and len(message) < 600
    shutil.rmtree(copy)  # as the message says
    load_data(DataConfig(root=root, tfds_dir=tmp_path / "tfds"))


@pytest.fixture(scope="session")
def small_tmpfs(tmp_path_factory):
    """``run(folder, command, size)``: ``command`` (sh) with a small tmpfs (``size``, as
    mount takes it) mounted on ``folder``, in a user and mount namespace of its own; skips
    where that is not permitted."""
    probe = tmp_path_factory.mktemp("probe")
    try:
        proc = subprocess.run(
            ["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=2M tmpfs {probe}"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except FileNotFoundError:
        pytest.skip("unshare is not installed")
    if proc.returncode:
        pytest.skip(f"cannot mount a tmpfs in a user namespace here ({proc.stderr.strip()})")

    def run(folder: Path, command: str, size: str = "2M", timeout: float = 300) -> subprocess.CompletedProcess:
        folder.mkdir(parents=True, exist_ok=True)
        script = f"mount -t tmpfs -o size={size} tmpfs '{folder}' && {command}"
        return subprocess.run(
            ["unshare", "-rm", "sh", "-c", script], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=timeout
        )

    return run


@pytest.mark.slow
def test_a_full_tfds_dir_is_one_line_and_keeps_nothing(tmp_path, small_tmpfs):
    root = tmp_path / "manual"
    root.mkdir()
    synthetic_npz(root / "bloodmnist.npz", n=(400, 50, 50))  # about 1 MB prepared, in 256 KB
    small = tmp_path / "small"
    load = (
        "import sys; from keras_blood.config.cli import run_main; from keras_blood.config.schema import DataConfig; "
        "from keras_blood.data import load_data; "
        f"sys.exit(run_main(lambda argv: load_data(DataConfig(root='{root}', tfds_dir='{small}/tfds'))))"
    )
    proc = small_tmpfs(small, f"'{sys.executable}' -c \"{load}\"; echo exit=$?; find '{small}'", size="256k")
    line = one_error_line(proc.stderr)
    assert "exit=2" in proc.stdout, proc.stdout + proc.stderr[-3000:]
    assert line.startswith(
        f"error: no space left on the device of data.tfds_dir ({small}/tfds) while preparing bloodmnist/28"
    )
    assert "set data.tfds_dir to a folder with more room" in line
    assert proc.stdout.split("exit=2\n")[1].split() == [str(small)]  # the folders the prepare made are gone too


# ----------------------------------------------------------------------------- serving


@pytest.fixture
def tiny(tmp_path):
    import keras

    from keras_blood.config.schema import Config
    from keras_blood.models.registry import build_model

    config = Config.model_validate(
        {
            "name": "tiny",
            "model": {"name": "basic", "filters": [4, 4, 4], "dense_units": 8},
            "output": {"runs_dir": str(tmp_path / "runs"), "publish_dir": str(tmp_path / "a" / "b" / "sm")},
        }
    )
    keras.utils.set_random_seed(0)
    return config, build_model(config.model, (28, 28, 3), 8)


@pytest.mark.slow
def test_a_full_export_disk_is_one_line_and_publishes_nothing(tmp_path, small_tmpfs):
    small = tmp_path / "small"
    export = f"""
        import sys, keras
        from keras_blood.config.cli import run_main
        from keras_blood.config.schema import Config
        from keras_blood.models.registry import build_model
        from keras_blood.serving.export import publish_model
        config = Config.model_validate({{"name": "big", "model": {{"name": "fnn", "hidden_units": 512}},
                                        "output": {{"publish_dir": "{small}/sm"}}}})
        model = build_model(config.model, (28, 28, 3), 8)  # 1.2 M parameters: 4.8 MB of float32
        sys.exit(run_main(lambda argv: publish_model(model, config, [str(k) for k in range(8)], {{}})))
    """
    Path(tmp_path / "export.py").write_text(textwrap.dedent(export))
    proc = small_tmpfs(small, f"'{sys.executable}' '{tmp_path / 'export.py'}'; echo exit=$?; find '{small}'")
    line = one_error_line(proc.stderr)
    assert "exit=2" in proc.stdout, proc.stdout + proc.stderr[-3000:]
    assert line == (
        f"error: cannot write a version under {small}/sm/big (no space left on device); nothing was "
        "published: free space there or --set output.publish_dir=<another folder>"
    )
    assert proc.stdout.split("exit=2\n")[1].split() == [str(small), f"{small}/sm", f"{small}/sm/big"]


def test_export_folders_are_readable_by_other_users_under_a_private_umask(tiny):
    from keras_blood.serving.export import publish_model
    from keras_blood.serving.publish import check_publish_target

    config, model = tiny
    previous = os.umask(0o077)
    try:
        check_publish_target(config, list("abcdefgh"), (28, 28, 3))  # before training: publish_dir and above
        made = [config.output.publish_dir, *list(config.output.publish_dir.parents)[:2]]
        assert {stat.S_IMODE(p.stat().st_mode) for p in made} == {0o755}
        version = publish_model(model, config, list("abcdefgh"), {})
    finally:
        os.umask(previous)
    for folder in (config.output.publish_dir, version.parent, version):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o755, folder


def test_make_folders_leaves_existing_folders_alone(tmp_path):
    (tmp_path / "mine").mkdir(mode=0o700)
    previous = os.umask(0o077)
    try:
        make_folders(tmp_path / "mine" / "x" / "y")
    finally:
        os.umask(previous)
    modes = {
        p.name: stat.S_IMODE(p.stat().st_mode)
        for p in (tmp_path / "mine", tmp_path / "mine" / "x", tmp_path / "mine" / "x" / "y")
    }
    assert modes == {"mine": 0o700, "x": 0o755, "y": 0o755}


def dead_pid() -> int:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    return dead.pid


def test_stale_staged_files_of_dead_processes_are_removed(tmp_path):
    pid, host = dead_pid(), host_name()
    names = {
        "dead": f".tmp-{host}-{pid}-k2j4h5g6-model.onnx",
        "dead int8": f".tmp-{host}-{pid}-abc_1234-model_int8.tflite",
        "alive": f".tmp-{host}-{os.getpid()}-a1b2c3d4-model.tflite",
        "other host": f".tmp-another-host-{pid}-a1b2c3d4-model.onnx",
        "old legacy": ".tmp-ab12cd34-model.onnx",
        "new legacy": ".tmp-ef56gh78-model.onnx",
    }
    for name in names.values():
        (tmp_path / name).write_bytes(b"half")
    (tmp_path / "model.onnx").write_bytes(b"published")
    day_ago = time.time() - 25 * 3600
    os.utime(tmp_path / names["old legacy"], (day_ago, day_ago))
    removed = remove_stale_staging(tmp_path, ".tmp-")
    assert {p.name for p in removed} == {names["dead"], names["dead int8"], names["old legacy"]}
    assert {p.name for p in tmp_path.iterdir()} == {
        "model.onnx",
        names["alive"],
        names["other host"],
        names["new legacy"],
    }


@pytest.fixture
def version(tiny):
    from keras_blood.serving.export import publish_model

    config, model = tiny
    recipe = {"center_crop_fraction": 200 / 360, "resize": [28, 28], "method": "bicubic"}
    return publish_model(
        model,
        config,
        list(CLASS_NAMES),
        {},
        recipe,
    )


def test_export_edge_removes_what_a_killed_one_left(version):
    pytest.importorskip("ai_edge_litert", reason="the edge extra is not installed: pip install -e '.[edge]'")
    from keras_blood.serving.edge import export_edge

    edge = version / "edge"
    edge.mkdir()
    left = edge / f".tmp-{host_name()}-{dead_pid()}-k2j4h5g6-model.onnx"
    alive = edge / f".tmp-{host_name()}-{os.getpid()}-a1b2c3d4-model.onnx"
    for path in (left, alive):
        path.write_bytes(b"half an onnx file")
    target = export_edge(version, "litert")
    assert {p.name for p in edge.iterdir()} == {target.name, alive.name}


@pytest.mark.slow
def test_a_killed_export_edge_leaves_nothing_after_the_next(version):
    pytest.importorskip("tf2onnx", reason="the edge extra is not installed: pip install -e '.[edge]'")
    edge = version / "edge"
    proc = subprocess.Popen(
        [sys.executable, "-m", "keras_blood.export_edge", str(version), "--format", "onnx"],
        cwd=REPO,
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 300
        while not list(edge.glob(".tmp-*")) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    staged = list(edge.glob(".tmp-*"))
    assert staged and not (edge / "model.onnx").exists()  # killed while checking the staged file
    from keras_blood.serving.edge import export_edge

    target = export_edge(version, "onnx")
    assert [p.name for p in edge.iterdir()] == [target.name]


def png_header(width: int, height: int, data: bytes = b"") -> bytes:
    """A PNG of ``width`` x ``height`` RGB pixels whose IDAT holds ``data`` (zlib); with
    none, a valid header and nothing after it."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def test_images_of_huge_dimensions_are_refused_from_their_header(version, tmp_path):
    from PIL import Image

    from keras_blood import predict as predict_command
    from keras_blood.preparation.decode import MAX_PIXELS
    from keras_blood.serving.predict import predict

    assert predict_command.MAX_PIXELS == MAX_PIXELS  # the command's default, kept without TensorFlow
    (tmp_path / "large.png").write_bytes(png_header(10_000, 8_000))  # 80 megapixels in 57 bytes
    (tmp_path / "huge.png").write_bytes(png_header(20_000, 20_000))  # past PIL's own limit: it gives the count
    Image.fromarray(np.zeros((40, 60, 3), np.uint8)).save(tmp_path / "small.png")
    files = [str(tmp_path / name) for name in ("large.png", "huge.png", "small.png")]
    output, failed = predict(version, files, tmp_path / "out.csv")
    rows = {Path(r["path"]).name: r for r in csv_rows(output)}
    assert failed == 2 and rows["small.png"]["error"] == ""
    assert rows["large.png"]["error"] == (
        f"image of 10000x8000 pixels, more than the limit of {MAX_PIXELS} (--max-pixels); not decoded"
    )
    assert rows["huge.png"]["error"].startswith("image of 400000000 pixels, more than the limit")
    # A lower limit refuses the small one too; the command takes it as --max-pixels.
    output, failed = predict(version, files[2:], tmp_path / "low.csv", max_pixels=40 * 60 - 1)
    assert failed == 1 and "image of 60x40 pixels" in csv_rows(output)[0]["error"]
    proc = subprocess.run(
        [sys.executable, "-m", "keras_blood.predict", str(version), *files[2:], "--max-pixels", "0"],
        cwd=tmp_path,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "--max-pixels: must be at least 1" in proc.stderr and "Traceback" not in proc.stderr


def csv_rows(path: Path) -> list[dict]:
    import csv

    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_a_real_20000_pixel_square_png_is_refused_in_little_memory(version, tmp_path):
    """The issue's file: 1.2 MB of PNG, 20000x20000 black pixels (2.36 GB peak before)."""
    compress = zlib.compressobj(9)
    row = b"\x00" * (1 + 3 * 20_000)  # filter byte, then RGB
    data = b"".join(compress.compress(row) for _ in range(20_000)) + compress.flush()
    (tmp_path / "huge.png").write_bytes(png_header(20_000, 20_000, data))
    measure = """
        import resource, subprocess, sys
        proc = subprocess.run([sys.executable, "-m", "keras_blood.predict", *sys.argv[1:]])
        print("peak_mb", resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, "exit", proc.returncode)
    """
    proc = python(
        measure, str(version), str(tmp_path / "huge.png"), "--output", str(tmp_path / "out.csv"), cwd=tmp_path
    )
    peak = float(proc.stdout.split("peak_mb")[1].split()[0])
    assert "exit 1" in proc.stdout and "more than the limit" in proc.stdout, proc.stdout + proc.stderr[-2000:]
    assert peak < 1500, peak
