"""Shared fixtures: tiny synthetic data, fast configs, one Ray instance per session."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
if os.environ.get("PYTEST_XDIST_WORKER"):  # make check runs two workers on two cores
    import torch

    torch.set_num_threads(1)
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "1")

from mer_tune.data import synthetic as synth  # noqa: E402
from mer_tune.data.layout import DEFAULT_FOLDERS  # noqa: E402
from mer_tune.method.config import build_config  # noqa: E402

# Small and quick: a few epochs of a narrow model on the tiny synthetic data.
FAST = {
    "model": {"hidden": 16, "heads": 2, "head_dims": [16]},
    "pretrain": {"epochs": 1},
    "finetune": {"epochs": 4},
    "self_training": {
        "epochs": 1,
        # Low enough that the briefly trained tiny model yields pseudo-labels.
        "thresholds": {c: 0.25 for c in synth.MER2024_CLASSES},
    },
    "optim": {"batch_size": 64, "lr": 0.003},
    "oversample": {"target": 40},
    "eval": {"folds": 2},
}


# Fixtures that start Ray or a server: tests using them are left out of `make check`.
SERVICE_FIXTURES = {"ray_session", "search_env", "mlflow_server", "auth_server"}


def pytest_collection_modifyitems(items):
    for item in items:
        if SERVICE_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.services)


@pytest.fixture(scope="session", autouse=True)
def _isolated_home(tmp_path_factory):
    """The built-in dataset cache goes to a temp folder, not the user's home."""
    home = tmp_path_factory.mktemp("mer-tune-home")
    os.environ["MER_TUNE_HOME"] = str(home)
    yield home


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    return synth.write(tmp_path_factory.mktemp("data") / "tiny", "tiny", seed=0)


@pytest.fixture
def fast_cfg():
    return build_config(FAST)


def write_dataset(
    root: Path, n_lab: int = 30, n_unl: int = 10, dims=(4, 3, 5), classes=None, seed: int = 0
) -> Path:
    """A small hand-made MERTools dataset, to be broken on purpose by a test."""
    classes = classes or ["neutral", "angry", "happy", "sad", "worried", "surprise"]
    rng = np.random.default_rng(seed)
    names = [f"sample_{i:08d}" for i in range(n_lab + n_unl)]
    for m, dim in zip(["audio", "visual", "text"], dims, strict=True):
        folder = root / "features" / DEFAULT_FOLDERS[m]
        folder.mkdir(parents=True, exist_ok=True)
        for name in names:
            np.save(folder / f"{name}.npy", rng.normal(size=dim).astype(np.float32))
    labels = [classes[i % len(classes)] for i in range(n_lab)]
    pd.DataFrame({"name": names[:n_lab], "discrete": labels}).to_csv(
        root / "label-disdim.csv", index=False
    )
    return root


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the whole test session (starting Ray costs seconds)."""
    import ray

    ray.init(
        num_cpus=2,
        include_dashboard=False,
        configure_logging=False,
        log_to_driver=False,
        _node_ip_address="127.0.0.1",  # nothing in the tests listens beyond 127.0.0.1
    )
    yield
    ray.shutdown()


# Thresholds low enough that the tiny, briefly trained model yields pseudo-labels.
LOW_THRESHOLDS_SPACE = """
description: thresholds over a range the tiny test model reaches
params:
  self_training.thresholds.neutral: {type: float, low: 0.15, high: 0.5}
  self_training.thresholds.angry: {type: float, low: 0.15, high: 0.5}
  self_training.thresholds.worried: {type: float, low: 0.15, high: 0.5}
"""


@pytest.fixture
def search_env(tmp_path, monkeypatch, ray_session):
    """A working dir with a fast base config, a tiny space and a sqlite MLflow store."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "fast.yaml").write_text(yaml.safe_dump(FAST))
    (tmp_path / "space.yaml").write_text(LOW_THRESHOLDS_SPACE)
    return tmp_path


def tiny_search(env: Path, tiny_dir: Path, **kw):
    """A real search of the tiny data with the fast config and space of `search_env`,
    logged to a sqlite store in `env`; keyword arguments override the defaults."""
    from mer_tune.hpo.tuner import search

    args = dict(
        space=str(env / "space.yaml"),
        trials=4,
        data=str(tiny_dir),
        config=str(env / "fast.yaml"),
        concurrency=2,
        tracking_uri=f"sqlite:///{env / 'mlflow.db'}",
        storage=str(env / "runs"),
    )
    return search(**(args | kw))


def as_if_killed_before_its_end(path: Path) -> None:
    """A finished search's folder made to look like one whose driver died before the end
    (search.yaml without the mark a finished search gets), so that --resume takes it."""
    state = yaml.safe_load((path / "search.yaml").read_text())
    assert state.pop("finished")
    (path / "search.yaml").write_text(yaml.safe_dump(state))


def wait_for_server(uri: str, log: Path, timeout: float, alive=lambda: True) -> None:
    """Until `uri`/health answers; fails the test with the server's log if it does not."""
    deadline = time.time() + timeout
    while True:
        try:
            urllib.request.urlopen(uri + "/health", timeout=1)
            return
        except OSError:
            if time.time() > deadline or not alive():
                pytest.fail(f"mlflow server did not start: {log.read_text()[-800:]}")
            time.sleep(0.5)


@pytest.fixture
def mlflow_server(tmp_path):
    """`mlflow server` on 127.0.0.1 with a sqlite store, stopped after the test."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    log = open(tmp_path / "mlflow-server.log", "w")  # noqa: SIM115 - open while the server runs
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--workers",
            "1",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--backend-store-uri",
            f"sqlite:///{tmp_path / 'server.db'}",
            "--default-artifact-root",
            str(tmp_path / "artifacts"),
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_for_server(uri, tmp_path / "mlflow-server.log", 180, lambda: proc.poll() is None)
        yield uri
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
