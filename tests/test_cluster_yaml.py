"""cluster.yaml is a valid Ray cluster file with the pieces a search needs."""

from pathlib import Path

import yaml

CLUSTER = Path(__file__).resolve().parent.parent / "cluster.yaml"


def _config():
    return yaml.safe_load(CLUSTER.read_text())


def test_ray_validates_the_cluster_file():
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(_config()))  # raises on an invalid file


def test_it_holds_a_gpu_worker_mlflow_and_the_install():
    cfg = _config()
    workers = {k: v for k, v in cfg["available_node_types"].items() if k != cfg["head_node_type"]}
    gpu_types = [v["node_config"]["InstanceType"] for v in workers.values()]
    assert any(t.startswith(("g5", "p4d", "p5", "g6")) for t in gpu_types)
    assert cfg["docker"]["image"].startswith("rayproject/ray:2.60.0-py311-gpu")
    head = " ".join(cfg["head_start_ray_commands"])
    assert "mlflow server" in head and "--port 5000" in head
    assert "0.0.0.0" not in head  # MLflow listens on the private address only
    assert "--dashboard-host=127.0.0.1" in head
    assert any("pip install" in c and "/home/ray/mer-tune" in c for c in cfg["setup_commands"])
    assert cfg["file_mounts"]["/home/ray/mer-tune"] == "."
