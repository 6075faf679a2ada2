"""End to end on real BloodMNIST: evaluate and predict with the export of a real model
(conftest.bloodmnist_model, trained once for the session)."""

import csv
import io
import json
import subprocess
import sys

import numpy as np
import pytest

from keras_blood.evaluation import evaluate_version as evaluate_module
from keras_blood.serving.predict import predict
from tests.helpers import capture_from, command_lines, encode

COMPARED = ("accuracy", "precision_macro", "recall_macro", "f1_macro", "auc", "ece", "brier", "nll")


def test_evaluate_reproduces_the_training_metrics(bloodmnist_model, tmp_path, capsys):
    result = evaluate_module.evaluate(bloodmnist_model.export_dir, output_dir=tmp_path / "reports")
    recorded = json.loads((bloodmnist_model.run_dir / "metrics.json").read_text())
    assert result.metrics["num_examples"] == recorded["num_examples"] == 3421  # the whole test split
    for key in COMPARED:
        assert result.metrics[key] == pytest.approx(recorded[key], abs=5e-4), key
    assert result.metrics["confusion_matrix"] == recorded["confusion_matrix"]
    assert "These figures match the training run's" in capsys.readouterr().out

    report = result.report_dir
    assert report.parent == tmp_path / "reports" and report.name.startswith("dropout03-v1-test-")
    assert json.loads((report / "metrics.json").read_text())["accuracy"] == result.metrics["accuracy"]
    for name in ("confusion_matrix.png", "roc_curves.png", "reliability.png", "mistakes.png", "gradcam_mistakes.png"):
        assert (report / name).stat().st_size > 10_000, name
    with open(report / "per_class.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["class"] for r in rows] == recorded["class_names"]
    for row in rows:
        per_class = recorded["per_class"][row["class"]]
        assert float(row["f1"]) == pytest.approx(per_class["f1-score"], abs=1e-6)
        assert int(row["support"]) == per_class["support"]
    # Mean of the per-class one-vs-rest AUCs is MedMNIST's AUC.
    assert np.mean([float(r["auc"]) for r in rows]) == pytest.approx(recorded["auc"], abs=1e-5)


def test_most_confident_mistakes_come_first():
    labels = np.array([0, 1, 1, 0, 2])
    probs = np.array([[0.9, 0.1, 0], [0.6, 0.4, 0], [0.1, 0.9, 0], [0.2, 0.7, 0.1], [0.05, 0.95, 0]])
    assert evaluate_module.most_confident_mistakes(labels, probs, 10).tolist() == [4, 3, 1]
    assert evaluate_module.most_confident_mistakes(labels, probs, 2).tolist() == [4, 3]


def test_evaluate_agrees_with_medmnist_evaluator(bloodmnist_model, bloodmnist_root, tmp_path):
    evaluator = pytest.importorskip("medmnist.evaluator", reason="medmnist (optional) not installed")
    # MedMNIST's Evaluator reads the whole split's labels, so evaluate the whole split.
    result = evaluate_module.evaluate(bloodmnist_model.export_dir, ["data.max_examples=null"], output_dir=tmp_path)
    auc, acc = evaluator.Evaluator("bloodmnist", "test", root=str(bloodmnist_root)).evaluate(result.probs)
    assert result.metrics["num_examples"] == 3421
    assert result.metrics["accuracy"] == pytest.approx(acc, abs=1e-9)
    assert result.metrics["auc"] == pytest.approx(auc, abs=1e-9)


def test_raw_captures_are_classified_as_their_28x28_arrays(bloodmnist_model, bloodmnist_root, tmp_path):
    """The stand-in for full-resolution PBC images: captures made from BloodMNIST test arrays.
    The recipe blurs a little, so an example near a tie may change class: most may not."""
    data = np.load(bloodmnist_root / "bloodmnist.npz")
    arrays, labels = data["test_images"][:96], data["test_labels"][:96].ravel()
    paths = []
    for i, small in enumerate(arrays):
        paths.append(tmp_path / "captures" / f"{i:03d}.jpg")
        paths[-1].parent.mkdir(exist_ok=True)
        paths[-1].write_bytes(encode(capture_from(small, seed=i), "JPEG"))
    csv_path, failed = predict(
        bloodmnist_model.export_dir, [str(tmp_path / "captures")], tmp_path / "p.csv", out=io.StringIO()
    )
    assert failed == 0
    with open(csv_path, newline="") as f:
        raw = [row["label"] for row in csv.DictReader(f)]
    from keras_blood.serving.version import load_version

    version = load_version(bloodmnist_model.export_dir)
    on_arrays = version.serve(pixels=arrays)["probabilities"].numpy().argmax(1)
    names = np.array(version.class_names)
    assert np.mean(np.array(raw) == names[on_arrays]) >= 0.9
    assert abs(np.mean(np.array(raw) == names[labels]) - np.mean(on_arrays == labels)) <= 0.1


def test_cli_prints_the_report_folder_last_and_fails_cleanly(bloodmnist_model, tmp_path, child_env):
    env = {**child_env, "TF_CPP_MIN_LOG_LEVEL": "3"}
    command = [sys.executable, "-m", "keras_blood.evaluate", str(bloodmnist_model.export_dir), "--split", "val"]
    proc = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("reports/dropout03-v1-val-") and (tmp_path / last / "mistakes.png").is_file()
    assert "(n=1712)" in proc.stdout and "nothing to compare" in proc.stdout  # training recorded test

    for args, message in [
        (["--split", "holdout"], "--split 'holdout'"),
        (["--set", "data.root=/nowhere", "--set", "data.download=false"], "/nowhere"),
        (["--set", "train.epochs=0"], "train.epochs = 0"),
    ]:
        proc = subprocess.run([*command[:4], *args], capture_output=True, text=True, cwd=tmp_path, env=env)
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr[-2000:]
        assert len(command_lines(proc.stderr)) == 1 and "Traceback" not in proc.stderr
