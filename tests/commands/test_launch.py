"""``python -m keras_blood.launch``: free ports, each worker's TF_CONFIG, and every worker
stopped when one fails (two workers training together: tests/training/test_distribute.py)."""

import json
import re

from keras_blood import launch


def test_launcher_ports_and_tf_config():
    ports = launch.free_ports(3)
    assert len(set(ports)) == 3
    spec = json.loads(launch.tf_config(["127.0.0.1:1", "127.0.0.1:2"], 1))
    assert spec == {"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}, "task": {"type": "worker", "index": 1}}


def test_launcher_stops_every_worker_when_one_fails(tmp_path, capsys):
    # A config that does not exist: each worker exits 2 at once, the launcher with it.
    status = launch.launch(2, [str(tmp_path / "missing.yaml")])
    assert status == 2
    out = capsys.readouterr().out
    # The first worker to fail stops the other, which may not have got as far as saying why.
    assert re.search(r"^\[worker-[01]\] error: config file .*missing\.yaml' does not exist", out, re.M)
