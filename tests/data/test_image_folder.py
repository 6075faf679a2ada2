"""A lab's own images: folders and lists listed, classes matched, splits drawn by group
(keras_blood.data.sources.image_folder.listing, no TensorFlow), every image format read by one rule (the
image_folder builder), and the commands end to end on a generated folder and on real
captures laid out as a lab would lay them out."""

import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from keras_blood.data.sources.image_folder.listing import list_images, normal
from keras_blood.errors import DataError
from tests.helpers import REPO, SHARED_DATA, command_lines, lab_folder


def listed(listing, split=None):
    rows = listing.splits == split if split else np.ones(len(listing), bool)
    return {(f, listing.class_names[label]) for f, label in zip(listing.files[rows], listing.labels[rows])}


# ----------------------------------------------------------------------------- listing


def test_class_folders_are_split_by_group_and_stratified(tmp_path):
    root = lab_folder(tmp_path / "lab")
    listing = list_images(root, group_pattern=r"(slide\d+)_", seed=3)
    assert listing.class_names == ["eosinophil", "lymphocyte", "neutrophil"] and len(listing) == 90
    for split in ("train", "val", "test"):
        rows = listing.splits == split
        assert set(listing.labels[rows]) == {0, 1, 2}, split  # every class in every split
        others = set(listing.groups[~rows])
        assert not set(listing.groups[rows]) & others, f"a slide on both sides of {split}"
    assert np.mean(listing.splits == "test") == pytest.approx(0.2, abs=0.07)
    # Seeded: the same draw again, another with another seed.
    assert np.array_equal(list_images(root, group_pattern=r"(slide\d+)_", seed=3).splits, listing.splits)
    assert not np.array_equal(list_images(root, group_pattern=r"(slide\d+)_", seed=4).splits, listing.splits)


def test_classes_order_aliases_and_what_is_left_out(tmp_path):
    root = lab_folder(
        tmp_path / "lab", folders={"eosinophil": "Eosinophils", "lymphocyte": "LYMPHO", "neutrophil": "band_neutrophil"}
    )
    (root / "LYMPHO" / "Thumbs.db").write_text("not an image")
    (root / "basophil").mkdir()
    (root / "basophil" / "b.png").write_bytes((root / "LYMPHO" / "slide0_0.png").read_bytes())
    listing = list_images(
        root,
        classes=["neutrophil", "lymphocyte", "eosinophil"],
        aliases={"neutrophil": ["Band Neutrophil"], "lymphocyte": ["lympho"], "eosinophil": ["eosinophils"]},
    )
    assert listing.class_names == ["neutrophil", "lymphocyte", "eosinophil"]
    assert set(listing.labels[np.char.startswith(listing.files, "band_neutrophil/")]) == {0}
    assert listing.left_out == {"files without an image suffix": 1, "class basophil": 1}
    assert "left out: files without an image suffix (1), class basophil (1)" in listing.counts()
    assert normal("Band_neutrophil") == normal("band-Neutrophil ") == "band neutrophil"


def test_split_folders_in_any_case_draw_only_the_missing_split(tmp_path):
    for split in ("TRAIN", "Test"):
        lab_folder(tmp_path / "lab" / split, per_class=20, seed=len(split))
    lab_folder(tmp_path / "lab" / "TEST_SIMPLE", per_class=2)
    listing = list_images(tmp_path / "lab", seed=0)
    assert listed(listing, "test") == {(f, c) for f, c in listed(listing) if f.startswith("Test/")}
    assert {f.split("/")[0] for f in listing.files[listing.splits == "val"]} == {"TRAIN"}
    assert listing.left_out == {"folder TEST_SIMPLE/ (not a split)": 1}


def test_a_list_with_a_header_reads_any_columns_and_one_without_reads_path_label_group_split(tmp_path):
    root = lab_folder(tmp_path / "lab", per_class=10)
    files = sorted(p.relative_to(tmp_path).as_posix() for p in root.rglob("*.*"))
    with (tmp_path / "export.tsv").open("w", newline="") as f:  # a lab system's export
        writer = csv.writer(f, delimiter="\t")
        writer.writerow(["id", "file", "class", "patient"])
        writer.writerows([i, file, file.split("/")[1].upper(), "p1"] for i, file in enumerate(files))
    listing = list_images(tmp_path / "export.tsv", seed=0)
    assert listing.class_names == ["EOSINOPHIL", "LYMPHOCYTE", "NEUTROPHIL"] and len(listing) == 30
    assert listing.root == tmp_path

    rows = [
        [file, file.split("/")[1], file.split("_")[0], "test" if i % 3 == 0 else ""] for i, file in enumerate(files)
    ]
    (tmp_path / "plain.csv").write_text("\n".join(",".join(row) for row in rows))
    listing = list_images(tmp_path / "plain.csv", val_fraction=0.25, seed=0)
    given_test = {row[0] for row in rows if row[3] == "test"}
    assert set(listing.files[listing.splits == "test"]) == given_test  # no test drawn: it was given
    assert set(listing.splits) == {"train", "val", "test"}


@pytest.mark.parametrize(
    "layout, kwargs, expected",
    [
        ("missing", {}, "does not exist; give a folder of class folders or a .csv/.tsv list"),
        ("one class", {}, "found 1 class(es) ['eosinophil']; at least 2 are needed"),
        ("empty class", {}, "class 'monocyte' has no images in any file; add images of it"),
        ("test lacks a class", {}, "class 'neutrophil' has no images in the test split"),
        ("classes", {"classes": ["eosinophil", "basophil"]}, "class 'basophil' has no images in any file"),
        (
            "classes",
            {"aliases": {"basophil": ["x"]}, "classes": ["eosinophil", "neutrophil"]},
            "data.class_aliases: 'basophil' is not one of data.classes",
        ),
        ("classes", {"group_pattern": "slide"}, "has no (group); put the part that names the group in parentheses"),
        ("classes", {"group_pattern": "(slide"}, "is not a regular expression"),
        ("classes", {"group_pattern": "(slide)"}, "1 group(s) of images cannot be split 5 ways"),
        ("bad list", {}, "line 3: ['a.png'] lacks a path or a label"),
        ("list of missing files", {}, "1 listed file(s) do not exist, e.g."),
        ("bad split", {}, "split 'holdout' is not one of train, validation, test"),
    ],
)
def test_bad_folders_and_lists_are_one_line_naming_the_fix(tmp_path, layout, kwargs, expected):
    root = tmp_path / "lab"
    if layout in ("one class", "classes", "empty class"):
        lab_folder(
            root,
            per_class=10,
            folders={"eosinophil": "eosinophil", "neutrophil": "neutrophil"}
            if layout != "one class"
            else {"eosinophil": "eosinophil"},
        )
        if layout == "empty class":
            (root / "monocyte").mkdir()
    elif layout == "test lacks a class":
        lab_folder(root / "train", per_class=10)
        lab_folder(root / "test", per_class=10, folders={"eosinophil": "eosinophil", "lymphocyte": "lymphocyte"})
    elif layout in ("bad list", "list of missing files", "bad split"):
        lab_folder(tmp_path / "images", per_class=10)
        line = {
            "bad list": "a.png",
            "list of missing files": "images/none.png,eosinophil",
            "bad split": "images/eosinophil/slide0_0.png,eosinophil,,holdout",
        }[layout]
        root = tmp_path / "list.csv"
        root.write_text("path,label,group,split\nimages/eosinophil/slide1_1.jpeg,eosinophil\n" + line + "\n")
    with pytest.raises(DataError) as error:
        list_images(root, **kwargs)
    assert expected in str(error.value) and "\n" not in str(error.value)


# ----------------------------------------------------------------------------- the builder


def test_every_format_and_pixel_kind_is_read_by_the_stated_rule(tmp_path):
    """JPEG, PNG, BMP, TIFF and GIF; grey, palette, alpha and 16-bit: grey repeated into
    RGB, a palette looked up, alpha dropped, 16 bits to their top 8."""
    from keras_blood.config.schema import DataConfig
    from keras_blood.data import load_data

    root = tmp_path / "lab"
    rgb = np.array([180, 90, 30], np.uint8)
    cases = {  # file -> (image, expected RGB)
        "grey.png": (Image.new("L", (30, 20), 77), (77, 77, 77)),
        "grey16.png": (Image.fromarray(np.full((20, 30), 40000, np.uint16)), (156, 156, 156)),
        "palette.gif": (Image.new("RGB", (30, 20), tuple(rgb)).convert("P"), tuple(rgb)),
        "alpha.png": (Image.new("RGBA", (30, 20), (*rgb, 60)), tuple(rgb)),
        "alpha.tiff": (Image.new("RGBA", (30, 20), (*rgb, 255)), tuple(rgb)),
        "grey.tiff": (Image.new("L", (30, 20), 200), (200, 200, 200)),
        "rgb.bmp": (Image.new("RGB", (30, 20), tuple(rgb)), tuple(rgb)),
        "rgb.jpeg": (Image.new("RGB", (30, 20), tuple(rgb)), tuple(rgb)),
    }
    for label in ("a", "b"):
        for i in range(5):  # five groups per class: enough to draw the splits
            for name, (image, _) in cases.items():
                path = root / label / f"{i}-{name}"
                path.parent.mkdir(parents=True, exist_ok=True)
                image.save(path)
    config = DataConfig(
        name="image_folder", root=root, tfds_dir=tmp_path / "tfds", image_size=8, group_pattern=r"^(\w/\d)-"
    )
    data = load_data(config, seed=0)
    expected = {name: colour for name, (_, colour) in cases.items()}
    for split in data.splits.values():
        for file, image in zip(split.files, split.images):
            colour = expected[Path(file).name.split("-", 1)[1]]
            # The mean: a palette is an approximation (PIL dithers), the rule is not.
            assert np.abs(image.mean(axis=(0, 1)) - colour).max() <= 2, (file, image[0, 0])


def test_an_unreadable_file_is_named_and_nothing_is_kept(tmp_path):
    from keras_blood.config.schema import DataConfig
    from keras_blood.data import load_data

    root = lab_folder(tmp_path / "lab", per_class=10)
    (root / "lymphocyte" / "broken.png").write_bytes(b"\x89PNG not really")
    config = DataConfig(name="image_folder", root=root, tfds_dir=tmp_path / "tfds")
    with pytest.raises(
        DataError, match=r"broken.png: not a readable image .* Remove them or set data.skip_unreadable: true"
    ):
        load_data(config)
    assert not list((tmp_path / "tfds").rglob("*.tfrecord*"))
    data = load_data(config.model_copy(update={"skip_unreadable": True}))
    assert sum(len(split) for split in data.splits.values()) == 30


# ----------------------------------------------------------------------------- commands


def run(args, cwd, env):
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_a_bad_folder_is_one_line_before_tensorflow_starts(tmp_path, child_env):
    root = lab_folder(tmp_path / "lab", per_class=6, folders={"eosinophil": "eosinophil"})
    result = run(
        ["keras_blood.train", str(REPO / "configs" / "image_folder.yaml"), "--set", f"data.root={root}"],
        tmp_path,
        child_env,
    )
    assert result.returncode == 2 and command_lines(result.stderr) == [
        f"error: {root}: found 1 class(es) ['eosinophil']; at least 2 are needed (one folder of images per class "
        "(optionally under train/validation/test folders), or a .csv/.tsv list of path,label)"
    ], result.stderr
    assert "tensorflow" not in result.stderr.lower()
    result = run(
        ["keras_blood.train", str(REPO / "configs" / "image_folder.yaml")],
        tmp_path,
        {**child_env, "KERAS_BLOOD_DATA_ROOT": ""},
    )
    assert result.returncode == 2 and "data.name image_folder needs data.root" in result.stderr


def test_real_pbc_captures_are_read_from_the_labs_own_list(kaggle_root):
    """pbc-captures/labels.tsv, a lab's export (file, label, class, ...), read as it is; and
    the Kaggle TEST folder, read as class folders."""
    listing = list_images(SHARED_DATA / "pbc-captures" / "labels.tsv", draw=False)
    assert len(listing) == 320 and len(listing.class_names) == 8 and "immature granulocyte" in listing.class_names
    test = list_images(kaggle_root / "TEST", draw=False)
    assert test.class_names == ["EOSINOPHIL", "LYMPHOCYTE", "MONOCYTE", "NEUTROPHIL"] and len(test) == 2487


@pytest.mark.slow
def test_real_captures_in_png_jpeg_and_bmp_train_and_another_labs_folder_evaluates_and_predicts(
    kaggle_root, tmp_path, command
):
    """The documented commands as a lab would run them: the PBC captures' four white-cell
    classes copied into class folders as PNG, JPEG and BMP, as a lab would from its own
    export, trained; then the Kaggle TEST folder's layout (upper-case class folders, one
    spelled otherwise, one class the model lacks, one it has missing) as another lab's.
    What is checked is the plumbing: every file read, classes matched, the figures written;
    two epochs on about a hundred images learn little."""
    labels = SHARED_DATA / "pbc-captures" / "labels.tsv"
    with labels.open(newline="") as f:
        rows = [
            row
            for row in csv.DictReader(f, delimiter="\t")
            if row["class"] in ("eosinophil", "lymphocyte", "monocyte", "neutrophil")
        ]
    assert len(rows) == 160
    lab = tmp_path / "our lab"
    for i, row in enumerate(rows):
        kind = ("PNG", "JPEG", "BMP")[i % 3]
        target = lab / row["class"] / f"{Path(row['file']).stem}.{kind.lower()}"
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.open(SHARED_DATA / "pbc-captures" / row["file"]).save(target, format=kind)
    sets = [
        "--set",
        f"data.root={lab}",
        "--set",
        f"data.tfds_dir={tmp_path / 'tfds'}",
        "--set",
        "train.epochs=2",
        "--set",
        f"output.runs_dir={tmp_path / 'runs'}",
        "--set",
        f"output.publish_dir={tmp_path / 'models'}",
    ]
    trained = command("keras_blood.train", str(REPO / "configs" / "image_folder.yaml"), *sets)
    assert trained.returncode == 0, trained.stderr[-3000:]
    (data,) = [line for line in trained.stdout.splitlines() if line.startswith(f"Data: {lab}:")]
    found = re.search(
        (
            r"4 classes \['eosinophil', 'lymphocyte', 'monocyte', 'neutrophil'\]; "
            r"train (\d+), val (\d+), test (\d+) images$"
        ),
        data,
    )
    assert found and sum(map(int, found.groups())) == 160, data  # every capture read, nothing left out
    version = Path(trained.stdout.strip().splitlines()[-1])
    assert json.loads((version / "assets.extra" / "metrics.json").read_text())["num_examples"] == int(found.group(3))

    other = tmp_path / "other lab"
    for folder, name in (("EOSINOPHIL", "EOS"), ("MONOCYTE", "MONOCYTE"), ("NEUTROPHIL", "Neutrophils")):
        (other / name).mkdir(parents=True)
        for file in sorted((kaggle_root / "TEST" / folder).iterdir())[:10]:
            (other / name / file.name).symlink_to(file)
    (other / "basophil").mkdir()
    (other / "basophil" / "b.jpeg").symlink_to(next((kaggle_root / "TEST" / "LYMPHOCYTE").iterdir()))
    aliases = "data.class_aliases={eosinophil: [EOS], neutrophil: [neutrophils]}"
    evaluated = command("keras_blood.evaluate", str(version), "--data", str(other), "--set", aliases)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    report = tmp_path / evaluated.stdout.strip().splitlines()[-1]
    figures = json.loads((report / "metrics.json").read_text())
    assert figures["num_examples"] == 30 and figures["classes_without_images"] == ["lymphocyte"]
    assert figures["left_out"] == {"class basophil (not one of the model's)": 1}
    assert [row["support"] for row in figures["per_class"].values()] == [10, 0, 10, 10]
    recalls = [row["recall"] for name, row in figures["per_class"].items() if name != "lymphocyte"]
    assert figures["balanced_accuracy"] == pytest.approx(np.mean(recalls))
    assert (report / "confusion_matrix.png").is_file() and (report / "mistakes.png").is_file()

    bad = command("keras_blood.evaluate", str(version), "--data", str(tmp_path / "nowhere"))
    assert bad.returncode == 2 and len(command_lines(bad.stderr)) == 1 and "does not exist" in bad.stderr

    predicted = command("keras_blood.predict", str(version), str(lab / "monocyte"), "--output", str(tmp_path / "p.csv"))
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    with open(tmp_path / "p.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 40  # PNG, JPEG and BMP, each read
