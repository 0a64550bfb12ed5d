"""Auth stays on, credentials stay secret, the cluster's MLflow server is locked down."""

import contextlib
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from conftest import tiny_search, wait_for_server

from mer_tune.errors import MerTuneError
from mer_tune.hpo.tracking import check_reachable, redact, resolve_uri, ui_command

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow  # a subprocess that imports Ray: CI runs it, `make check` not
def test_mer_tune_never_turns_ray_auth_off():
    env = {k: v for k, v in os.environ.items() if k != "RAY_AUTH_MODE"}
    code = "import os, mer_tune.hpo.tuner, mer_tune.cli; print(os.environ.get('RAY_AUTH_MODE'))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "None", out.stderr
    for f in ("Makefile", ".ci/run"):
        assert "RAY_AUTH_MODE" not in (ROOT / f).read_text(), f


@pytest.mark.parametrize(
    "uri, shown",
    [
        ("postgresql://mlflow:hunter2@db:5432/mlflow", "postgresql://mlflow:***@db:5432/mlflow"),
        ("http://admin:p%40ss@127.0.0.1:5000", "http://admin:***@127.0.0.1:5000"),
        ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
        ("sqlite:////tmp/m.db", "sqlite:////tmp/m.db"),
    ],
)
def test_passwords_are_redacted(uri, shown):
    assert redact(uri) == shown
    assert "hunter2" not in ui_command(uri, "1") and "p%40ss" not in ui_command(uri, "1")


def test_credentials_in_an_http_uri_go_where_mlflow_reads_them(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    assert resolve_uri("http://admin:p%40ss@host:5000") == "http://host:5000"
    assert os.environ["MLFLOW_TRACKING_USERNAME"] == "admin"
    assert os.environ["MLFLOW_TRACKING_PASSWORD"] == "p@ss"


@pytest.mark.parametrize(
    "uri", ["http//localhost:5000", "sqlite://rel.db", "ftp://host/x", "ftp://u:hunter2@h/x"]
)
def test_a_store_mlflow_cannot_use_fails_before_anything_trains(uri, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(MerTuneError, match="MLflow cannot use it") as err:
        check_reachable(uri)
    assert str(err.value).startswith(f"--tracking-uri {redact(uri)}:")
    assert "hunter2" not in str(err.value)
    assert list(tmp_path.iterdir()) == []  # and nothing was made on the way


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening_addresses(port: int) -> set[str]:
    """Local addresses with a socket listening on `port` (from /proc/net/tcp{,6})."""
    found = set()
    for name in ("tcp", "tcp6"):
        path = Path(f"/proc/net/{name}")
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            addr, _, hexport = local.partition(":")
            if state == "0A" and int(hexport, 16) == port:  # 0A: LISTEN
                found.add(addr)
    return found


def _running(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture
def auth_server(tmp_path, monkeypatch):
    """cluster/start-mlflow.sh as the head runs it, with its secret in a file."""
    password = "correct-horse-battery-staple"
    secret = tmp_path / "secret.json"
    store = f"sqlite:///{tmp_path / 'store.db'}"
    secret.write_text(json.dumps({"admin_password": password, "backend_store_uri": store}))
    port = _free_port()
    env = dict(
        os.environ,
        HOME=str(tmp_path),
        MER_TUNE_SECRET_FILE=str(secret),
        MER_TUNE_ARTIFACTS=str(tmp_path / "artifacts"),
        MER_TUNE_MLFLOW_PORT=str(port),
        MER_TUNE_MLFLOW_WORKERS="1",
        PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    )
    subprocess.run(
        ["bash", str(ROOT / "cluster" / "start-mlflow.sh")], env=env, check=True, timeout=60
    )
    state = tmp_path / ".mer-tune-mlflow"
    pid = int((state / "server.pid").read_text())
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_for_server(uri, state / "server.log", 90, lambda: _running(pid))
        monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
        monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
        yield uri, password, tmp_path
    finally:
        subprocess.run(["pkill", "-TERM", "-P", str(pid)], check=False)
        with contextlib.suppress(ProcessLookupError):  # gone with its child already
            os.kill(pid, 15)
        deadline = time.monotonic() + 30
        while _running(pid) and time.monotonic() < deadline:
            time.sleep(0.2)


@pytest.mark.slow
def test_cluster_mlflow_listens_on_loopback_with_basic_auth_and_secrets_stay_out(
    auth_server, search_env, tiny_dir
):
    uri, password, home = auth_server
    port = int(uri.rpartition(":")[2])
    assert _listening_addresses(port) <= {"0100007F", "00000000000000000000000001000000"}
    env_file = home / ".mer-tune.env"
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    assert password in env_file.read_text()
    assert password not in (ROOT / "cluster.yaml").read_text()
    # Without credentials the API refuses; with the wrong ones, so does the check.
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(uri + "/api/2.0/mlflow/experiments/search?max_results=1")
    assert refused.value.code == 401
    wrong = uri.replace("http://", "http://admin:wrong-password-here@")
    with pytest.raises(MerTuneError, match="refused the credentials") as err:
        check_reachable(resolve_uri(wrong))
    assert "wrong-password" not in str(err.value)

    # A real search logs through the credentials in the URI; none of it is printed or stored.
    with_creds = uri.replace("http://", f"http://admin:{password}@")
    res = tiny_search(search_env, tiny_dir, trials=1, name="auth", tracking_uri=with_creds)
    assert res.best_config is not None
    state = (res.path / "search.yaml").read_text()
    assert password not in state and yaml.safe_load(state)["tracking_uri"] == uri
    assert password not in res.ui_command
    from mer_tune.hpo.report import build_report, format_report

    assert password not in format_report(build_report("auth", search_env / "runs"), "json")
    from mlflow.tracking import MlflowClient

    run = MlflowClient(uri).get_run(res.parent_run_id)  # credentials from the environment
    assert run.info.status == "FINISHED"


@pytest.mark.parametrize(
    "args",
    [
        ["cache", "clear", "../victim", "--yes"],
        ["cache", "clear", "/abs/victim", "--yes"],
        ["cache", "info", "a/b"],
        ["report", "../victim"],
        ["confirm", ".."],
        ["search", "--resume", "../victim"],
        ["search", "--name", "a/b", "--data", "synthetic:tiny"],
        ["report", ".hidden"],
        pytest.param(["report", "a" * 5000], id="long"),  # quoted shortened, not whole
    ],
)
def test_search_names_are_plain_names_everywhere(args, tmp_path, capsys):
    from test_cli import run_cli

    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.pt").write_text("keep me")
    code, _, err = run_cli([*args, "--storage", str(tmp_path / "runs")], capsys)
    assert code == 2, err
    assert "a search name is letters, digits" in err and len(err.strip().splitlines()) == 1
    assert "starting with a letter or digit" in err and len(err) < 300
    assert (victim / "precious.pt").read_text() == "keep me"
    assert not (tmp_path / "runs" / "a").exists()


@pytest.mark.slow  # two mer-tune processes
def test_cache_clear_touches_only_a_marked_cache_and_asks_first(tmp_path, capsys):
    from test_cli import run_cli

    from mer_tune.hpo.cache import StageStore

    runs = tmp_path / "runs"
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "model-0123456789abcdef0123456789abcdef.pt").write_text("not ours")
    (runs / "s").mkdir(parents=True)
    (runs / "s" / "search.yaml").write_text(yaml.safe_dump({"cache_dir": str(victim)}))
    code, _, err = run_cli(["cache", "clear", "s", "--yes", "--storage", str(runs)], capsys)
    assert code == 1 and "not a mer-tune stage cache" in err
    assert len(list(victim.iterdir())) == 1

    cache = runs / "s" / "cache"
    store = StageStore(cache)
    store.get_or_compute("pretrain", {"k": 1}, lambda: {"w": 1})
    (runs / "s" / "search.yaml").write_text(yaml.safe_dump({"cache_dir": str(cache)}))
    answer_no = subprocess.run(
        [sys.executable, "-m", "mer_tune", "cache", "clear", "s", "--storage", str(runs)],
        input="n\n", capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert answer_no.returncode == 1 and "delete every stage cache entry" in answer_no.stderr
    assert answer_no.stderr.strip().endswith("nothing removed")
    assert store.info()["stages"]["pretrain"]["entries"] == 1
    no_answer = subprocess.run(
        [sys.executable, "-m", "mer_tune", "cache", "clear", "s", "--storage", str(runs)],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert no_answer.returncode == 2 and no_answer.stderr.strip().endswith(
        "error: no answer to read (stdin is not a terminal); add --yes"
    )
    assert store.info()["stages"]["pretrain"]["entries"] == 1
    code, out, _ = run_cli(["cache", "clear", "s", "--yes", "--storage", str(runs)], capsys)
    assert code == 0 and "removed 1 entries" in out and store.info()["stages"] == {}


def test_cache_clear_on_a_copied_search_clears_the_copy_not_the_original(tmp_path, capsys):
    from test_cli import run_cli

    from mer_tune.hpo.cache import StageStore
    from mer_tune.hpo.folder import SearchFolder

    runs = tmp_path / "runs"
    original = SearchFolder(runs / "a")
    original.path.mkdir(parents=True)
    StageStore(original.default_cache).get_or_compute("pretrain", {"k": 1}, lambda: {"w": 1})
    original.write_state({"cache_dir": str(original.default_cache.resolve())})
    shutil.copytree(original.path, runs / "b")

    assert SearchFolder(runs / "b").state()["cache_dir"] == str((runs / "b" / "cache").resolve())
    code, out, _ = run_cli(["cache", "clear", "b", "--yes", "--storage", str(runs)], capsys)
    assert code == 0 and "removed 1 entries" in out
    assert StageStore(original.default_cache).info()["stages"]["pretrain"]["entries"] == 1


def test_a_search_folder_is_private_and_two_default_names_never_collide(tmp_path):
    from mer_tune.hpo.starting import _reserve

    first = _reserve(tmp_path, "thresholds-20261127-120000", given=False)
    second = _reserve(tmp_path, "thresholds-20261127-120000", given=False)
    assert first.name == "thresholds-20261127-120000"
    assert second.name == "thresholds-20261127-120000-2"
    assert stat.S_IMODE(first.stat().st_mode) == 0o700
    with pytest.raises(MerTuneError, match="exists"):
        _reserve(tmp_path, "thresholds-20261127-120000", given=True)


def test_written_files_honour_the_umask(tmp_path):
    from mer_tune.hpo.cache import StageStore
    from mer_tune.outputs import UMASK, write_text

    write_text(tmp_path / "results.csv", "a,b\n")
    store = StageStore(tmp_path / "cache")
    store.get_or_compute("pretrain", {"k": 1}, lambda: {"w": 1})
    expected = 0o666 & ~UMASK
    assert stat.S_IMODE((tmp_path / "results.csv").stat().st_mode) == expected
    for entry in (tmp_path / "cache").glob("pretrain-*"):
        if entry.suffix in (".pt", ".sha256"):
            assert stat.S_IMODE(entry.stat().st_mode) == expected, entry


@pytest.mark.parametrize(
    "args",
    [
        ["cache", "clear", "b", "--yes"],
        ["cache", "info", "b"],
        ["report", "b"],
        ["confirm", "b"],
        ["pick", "b", "max weighted_f1"],
        ["search", "--resume", "b"],
    ],
)
def test_a_search_name_that_is_a_symlink_is_refused_by_every_command(tmp_path, capsys, args):
    """A name in one storage folder linking to a search in another: no command follows
    it (`cache clear` would empty the other search's cache)."""
    from test_cli import run_cli

    other = tmp_path / "other" / "a"
    (other / "cache").mkdir(parents=True)
    (other / "search.yaml").write_text(yaml.safe_dump({"trials": 1}))
    (other / "results.csv").write_text("trial,status\n")
    (other / "cache" / "kept").write_text("x")
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "b").symlink_to(other)
    code, _, err = run_cli([*args, "--storage", str(runs)], capsys)
    assert code == 2, err
    (line,) = err.strip().splitlines()
    assert line.startswith("error: ") and line.endswith(
        f" b: {runs / 'b'} is a symbolic link; a search is a folder in {runs} itself"
    ), line
    assert (other / "cache" / "kept").exists()


def test_rays_token_and_a_store_mer_tune_creates_are_private(tmp_path, monkeypatch):
    from mer_tune.hpo.ray_setup import private_ray_files
    from mer_tune.hpo.tracking import SearchRecorder

    ray_dir = tmp_path / ".ray"
    ray_dir.mkdir(mode=0o755)
    (ray_dir / "auth_token").write_text("secret")
    os.chmod(ray_dir, 0o755)
    os.chmod(ray_dir / "auth_token", 0o644)
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    assert private_ray_files(tmp_path) == [ray_dir, ray_dir / "auth_token"]
    assert stat.S_IMODE(ray_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((ray_dir / "auth_token").stat().st_mode) == 0o600
    assert private_ray_files(tmp_path) == []  # already private: nothing to do
    monkeypatch.chdir(tmp_path)
    SearchRecorder(f"sqlite:///{tmp_path / 'mlflow.db'}", "e")
    assert stat.S_IMODE((tmp_path / "mlflow.db").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "mlruns").stat().st_mode) == 0o700
