"""A real two-node Ray cluster on this machine (`ray start --head` + a second `ray start`
whose node advertises a fake GPU), a real `mlflow server`, and `mer-tune search` driving
them from its own process, as a user on a cluster's head node would."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import psutil
import pytest
import yaml
from conftest import FAST, LOW_THRESHOLDS_SPACE

pytestmark = pytest.mark.slow
RAY = str(Path(sys.executable).with_name("ray"))
MER_TUNE = str(Path(sys.executable).with_name("mer-tune"))
NODES_SCRIPT = """
import json, sys, ray
ray.init(address=sys.argv[1], configure_logging=False, log_to_driver=False)
nodes = [n for n in ray.nodes() if n["Alive"]]
print(json.dumps([
    {"id": n["NodeID"], "ip": n["NodeManagerAddress"], "gpus": n["Resources"].get("GPU", 0)}
    for n in nodes
]))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalCluster:
    """Head and worker nodes as `ray start --block` process groups, so that stopping (or
    killing) a node never touches the test session's own Ray."""

    def __init__(self) -> None:
        # Short: Ray's socket paths must stay under 107 characters.
        self.temp = tempfile.mkdtemp(prefix="rt", dir="/tmp")
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.nodes: dict[str, subprocess.Popen] = {}
        self.env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")

    def _start(self, name: str, args: list[str]) -> None:
        log = open(Path(self.temp) / f"{name}.log", "w")  # noqa: SIM115 - lives with the node
        self.nodes[name] = subprocess.Popen(
            [RAY, "start", "--block", "--node-ip-address", "127.0.0.1", *args],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def start(self, worker_gpus: int) -> None:
        self._start(
            "head",
            ["--head", "--port", str(self.port), "--num-cpus", "1", "--num-gpus", "0"]
            + ["--include-dashboard", "false", "--temp-dir", self.temp],
        )
        self.wait_for_nodes(1)
        self._start(
            "worker",
            ["--address", self.address, "--num-cpus", "2", "--num-gpus", str(worker_gpus)],
        )
        self.wait_for_nodes(2)

    def nodes_alive(self) -> list[dict]:
        """Alive nodes as Ray's GCS lists them (asked from a separate process)."""
        out = subprocess.run(
            [sys.executable, "-c", NODES_SCRIPT, self.address],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        return json.loads(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else []

    def wait_for_nodes(self, n: int, timeout: float = 120) -> list[dict]:
        deadline = time.time() + timeout
        while time.time() < deadline:
            nodes = self.nodes_alive()
            if len(nodes) >= n:
                return nodes
            time.sleep(1)
        logs = {p.name: p.read_text()[-400:] for p in Path(self.temp).glob("*.log")}
        raise AssertionError(f"{n} Ray nodes did not come up: {logs}")

    def tree(self, name: str) -> list[psutil.Process]:
        """A node's `ray start` process and everything it started (its trial workers too)."""
        try:
            root = psutil.Process(self.nodes[name].pid)
            return [root, *root.children(recursive=True)]
        except psutil.Error:
            return []

    def processes(self) -> list[psutil.Process]:
        """Every process of the cluster: the node trees and anything using its temp dir."""
        found = [p for name in self.nodes for p in self.tree(name)]
        for proc in psutil.process_iter(["cmdline", "status"]):
            if proc.info["status"] == psutil.STATUS_ZOMBIE:  # dead, waiting to be reaped
                continue
            try:
                if proc not in found and any(
                    self.temp in part for part in proc.info["cmdline"] or []
                ):
                    found.append(proc)
            except (ProcessLookupError, psutil.Error):
                continue
        return found

    def kill(self, name: str) -> None:
        """SIGKILL the node and all it started, at once, as a lost machine would vanish."""
        for proc in self.tree(name):
            with contextlib.suppress(psutil.Error):
                proc.kill()
        self.nodes[name].wait(timeout=30)

    def stop(self) -> None:
        for proc in self.nodes.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.time() + 30
        while self.processes() and time.time() < deadline:
            time.sleep(0.5)
        survivors = self.processes()
        for proc in survivors:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        psutil.wait_procs(survivors, timeout=10)  # SIGKILL is delivered, not instant
        for proc in self.nodes.values():
            proc.wait(timeout=30)


def is_loopback(ip: str) -> bool:
    """127.0.0.0/8, ::1, and IPv4 loopback written as IPv6 (::ffff:127.0.0.1)."""
    addr = ipaddress.ip_address(ip.split("%")[0])
    mapped = getattr(addr, "ipv4_mapped", None)
    return addr.is_loopback or bool(mapped and mapped.is_loopback)


def only_loopback() -> bool:
    """True in a network namespace whose only interface is loopback (`.ci/isolated`)."""
    return set(psutil.net_if_addrs()) <= {"lo"}


def listening_beyond_localhost(procs: list[psutil.Process]) -> list[str]:
    """Listening sockets reachable from beyond 127.0.0.1: any address but loopback's, and
    wildcard binds unless loopback is the only interface there is."""
    wildcard = {"0.0.0.0", "::"}
    bad = []
    for proc in procs:
        try:
            for conn in proc.net_connections(kind="inet"):
                ip = conn.laddr.ip
                if conn.status != psutil.CONN_LISTEN or is_loopback(ip):
                    continue
                if ip in wildcard and only_loopback():
                    continue
                bad.append(f"{proc.name()} {ip}:{conn.laddr.port}")
        except psutil.Error:
            continue
    return bad


@pytest.fixture
def cluster():
    c = LocalCluster()
    try:
        yield c
    finally:
        c.stop()
        leftover = c.processes()
        shutil.rmtree(c.temp, ignore_errors=True)
        assert not leftover, f"cluster processes still running: {leftover}"


def search_args(tmp_path: Path, cluster: LocalCluster, uri: str, trials: int) -> list[str]:
    (tmp_path / "fast.yaml").write_text(yaml.safe_dump(FAST))
    (tmp_path / "space.yaml").write_text(LOW_THRESHOLDS_SPACE)
    return (
        [MER_TUNE, "search", "--space", str(tmp_path / "space.yaml")]
        + ["--config", str(tmp_path / "fast.yaml"), "--data", "synthetic:tiny"]
        + ["--trials", str(trials), "--address", cluster.address, "--tracking-uri", uri]
        + ["--storage", str(tmp_path / "runs"), "--name", "cluster", "--no-cache"]
    )


def mlflow_pid(uri: str) -> int:
    port = int(uri.rsplit(":", 1)[1])
    for conn in psutil.net_connections(kind="inet"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port:
            return conn.pid
    raise AssertionError(f"nothing listens on port {port}")


def child_runs(uri: str) -> list:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("mer-tune")
    runs = client.search_runs([exp.experiment_id])
    return [r for r in runs if "mlflow.parentRunId" in r.data.tags]


def test_trials_run_on_the_gpu_node_and_log_over_http(cluster, mlflow_server, tmp_path):
    cluster.start(worker_gpus=1)
    gpu_nodes = {n["id"] for n in cluster.nodes_alive() if n["gpus"] >= 1}
    assert len(gpu_nodes) == 1
    args = search_args(tmp_path, cluster, mlflow_server, trials=3)
    args += ["--gpus-per-trial", "0.5", "--cpus-per-trial", "1"]
    driver = subprocess.Popen(
        args, env=cluster.env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    bad: list[str] = []
    while driver.poll() is None:  # while the search runs, check what listens where
        bad += listening_beyond_localhost([*cluster.processes(), psutil.Process(driver.pid)])
        time.sleep(2)
    output = driver.stdout.read().decode()
    assert driver.returncode == 0, output[-2000:]
    # The MLflow server binds 127.0.0.1 itself. Ray 2.60's own daemons (GCS, raylets, core
    # workers) bind every interface whatever --node-ip-address says: `make test` runs the
    # suite where loopback is the only interface (.ci/isolated), so they cannot be reached
    # from elsewhere; run bare on a host network, this is reported instead of failing.
    assert not listening_beyond_localhost([psutil.Process(mlflow_pid(mlflow_server))])
    if only_loopback():
        assert not bad, sorted(set(bad))
    else:
        warnings.warn(
            f"not isolated: Ray listens beyond 127.0.0.1: {sorted(set(bad))}", stacklevel=1
        )

    runs = child_runs(mlflow_server)
    assert len(runs) == 3
    for run in runs:
        assert run.info.status == "FINISHED"
        assert run.data.tags["ray.node_id"] in gpu_nodes  # each child run records its node
        assert "weighted_f1" in run.data.metrics


def test_losing_a_worker_mid_search_fails_or_retries_every_trial_visibly(
    cluster, mlflow_server, tmp_path
):
    cluster.start(worker_gpus=0)
    args = search_args(tmp_path, cluster, mlflow_server, trials=4)
    # Slow enough trials that some are running on the worker when it dies.
    args += ["--set", "finetune.epochs=300", "--max-failures", "1", "--concurrency", "3"]
    driver = subprocess.Popen(
        args, env=cluster.env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    deadline = time.time() + 300
    trials_on_worker: list = []
    while time.time() < deadline and driver.poll() is None and not trials_on_worker:
        time.sleep(0.2)
        with contextlib.suppress(psutil.Error):
            trials_on_worker = [
                p for p in cluster.tree("worker") if "ImplicitFunc" in " ".join(p.cmdline())
            ]
    assert trials_on_worker, "no trial started on the worker node"
    time.sleep(3)
    cluster.kill("worker")
    output, _ = driver.communicate(timeout=600)
    output = output.decode()

    table = yaml.safe_load((tmp_path / "runs" / "cluster" / "search.yaml").read_text())
    assert table["trials"] == 4
    results = (tmp_path / "runs" / "cluster" / "results.csv").read_text().splitlines()
    assert len(results) == 1 + 4, output[-2000:]  # every trial has a row
    runs = child_runs(mlflow_server)
    assert len(runs) == 4  # nothing missing from MLflow
    # --max-failures 1: each trial lost with the worker was retried, on the head.
    assert {r.info.status for r in runs} == {"FINISHED"}, [r.data.tags.get("error") for r in runs]
    assert all("weighted_f1" in r.data.metrics for r in runs)
