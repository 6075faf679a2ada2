"""``python -m keras_blood.color``: the colour-extraction figure from a config or a sweep
file, and the same pictures in TensorBoard (keras_blood.evaluation.plots)."""

import tensorflow as tf

from keras_blood.color import main as color_main
from keras_blood.config.schema import DataConfig
from keras_blood.data import load_data
from keras_blood.evaluation.plots import log_color_extraction
from tests.helpers import REPO, kaggle_tree


def test_figure_command_and_tensorboard_images(tmp_path, write_config):
    root = kaggle_tree(tmp_path / "data", {"TRAIN": {"A": 3, "B": 3}, "TEST": {"A": 1, "B": 1}})
    path = write_config({"model": {"name": "basic"}, "data": {"name": "blood_cell_images", "root": str(root)}})
    out = color_main([str(path), "--output", str(tmp_path / "fig" / "ce.png"), "--per-class", "2"])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    sweep_file = str(REPO / "configs" / "georgetown.yaml")  # a sweep file serves as well
    out = color_main([sweep_file, "--set", f"data.root={root}", "--output", str(tmp_path / "sweep.png")])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    data_config = DataConfig(name="blood_cell_images", root=root, color_extraction=True)
    data = load_data(data_config)
    (tmp_path / "run").mkdir()  # train() makes the run folder first
    log_color_extraction(data.splits["train"], data.class_names, data_config, tmp_path / "run")
    assert (tmp_path / "run" / "color_extraction.png").is_file()
    events = list((tmp_path / "run" / "logs" / "color_extraction").glob("events.out.tfevents.*"))
    tags = {v.tag for e in tf.compat.v1.train.summary_iterator(str(events[0])) for v in e.summary.value}
    assert tags == {f"color_extraction/{n}" for n in ("original", "mask", "cell_crop", "extracted")}
