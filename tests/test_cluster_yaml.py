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
    assert "cluster/start-mlflow.sh" in head and "MER_TUNE_ARTIFACTS=s3://" in head
    assert "0.0.0.0" not in head
    assert "--dashboard-host=127.0.0.1" in head
    assert any("pip install" in c and "/home/ray/mer-tune" in c for c in cfg["setup_commands"])
    assert cfg["file_mounts"]["/home/ray/mer-tune"] == "."
    script = (CLUSTER.parent / "cluster" / "start-mlflow.sh").read_text()
    assert "--host 127.0.0.1" in script and "--app-name basic-auth" in script


def test_every_node_runs_ray_with_token_auth():
    cfg = _config()
    assert "--env RAY_AUTH_MODE=token" in cfg["docker"]["run_options"]
    starts = cfg["head_start_ray_commands"] + cfg["worker_start_ray_commands"]
    assert all("RAY_AUTH_MODE=token" in c for c in starts if "ray start" in c)
    assert any("ray get-auth-token --generate" in c for c in cfg["head_setup_commands"])
    assert cfg["cluster_synced_files"] == ["~/.ray/auth_token"]
    assert "auth_token" in " ".join(cfg["worker_start_ray_commands"])
    for commands in (cfg["head_setup_commands"], cfg["worker_start_ray_commands"]):
        assert any("chmod 700 ~/.ray && chmod 600 ~/.ray/auth_token" in c for c in commands)


def test_gpu_workers_start_cuda_mps_before_ray_where_they_have_it():
    starts = _config()["worker_start_ray_commands"]
    mps = next(i for i, c in enumerate(starts) if "nvidia-cuda-mps-control -d" in c)
    ray_start = next(i for i, c in enumerate(starts) if "ray start" in c)
    assert mps < ray_start  # every trial's CUDA context is made through the daemon
    assert "command -v nvidia-cuda-mps-control" in starts[mps]  # skipped where absent
    assert not any("mps" in c for c in _config()["head_start_ray_commands"])  # CPU head
