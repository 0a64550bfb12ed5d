"""Interrupted searches resume cleanly; failures and timeouts are recorded; bad input fails early."""

import contextlib
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml
from conftest import (
    FAST,
    LOW_THRESHOLDS_SPACE,
    as_if_killed_before_its_end,
    tiny_search,
    write_dataset,
)
from mlflow.tracking import MlflowClient

from mer_tune.errors import MerTuneError
from mer_tune.hpo.tuner import search


def _env():
    env = dict(os.environ)
    env["RAY_AUTH_MODE"] = "disabled"
    env.pop("RAY_ADDRESS", None)
    return env


def _slow_search(tmp_path, tiny_dir, name: str, trials: int, finished: int, stderr=None):
    """`mer-tune search` in its own process group, slowed to a few seconds a trial, once
    `finished` of its trials have finished: (process, results.csv, tracking URI)."""
    # A few seconds a trial, time to stop it: retraining is each trial's own (pretraining
    # and finetuning are shared, trained once before the trials).
    slow = FAST | {"self_training": FAST["self_training"] | {"epochs": 40}}
    (tmp_path / "slow.yaml").write_text(yaml.safe_dump(slow))
    (tmp_path / "space.yaml").write_text(LOW_THRESHOLDS_SPACE)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cmd = [sys.executable, "-m", "mer_tune", "search", "--space", "space.yaml",
           "--trials", str(trials), "--data", str(tiny_dir), "--config", "slow.yaml",
           "--concurrency", "1", "--name", name, "--tracking-uri", uri, "--storage", "runs"]  # fmt: skip
    proc = subprocess.Popen(
        cmd, cwd=tmp_path, env=_env(), start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=stderr or subprocess.DEVNULL, text=True,
    )  # fmt: skip
    results = tmp_path / "runs" / name / "results.csv"
    deadline = time.time() + 240
    while time.time() < deadline:
        if results.exists() and (pd.read_csv(results)["status"] == "FINISHED").sum() >= finished:
            return proc, results, uri
        time.sleep(0.5)
    proc.kill()
    pytest.fail(f"the search did not finish {finished} trial(s) in time")


def _resume_program(cwd: Path, name: str, timeout: float = 300):
    """`mer-tune search --resume NAME` run as a program. One that has not ended in time
    (a normal resume here takes under a minute) fails the test with every thread's stack,
    written by faulthandler on SIGABRT, and the program's output so far."""
    cmd = [sys.executable, "-X", "faulthandler", "-m", "mer_tune", "search", "--resume", name,
           "--storage", "runs"]  # fmt: skip
    env = _env() | {"PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGABRT)
        out, err = proc.communicate(timeout=60)
        pytest.fail(f"the resume had not ended after {timeout:g} s:\n{out[-3000:]}\n{err[-12000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


@pytest.mark.slow
def test_sigkilled_search_resumes_without_losing_or_duplicating_trials(tmp_path, tiny_dir):
    trials = 6
    proc, results, uri = _slow_search(tmp_path, tiny_dir, "r", trials, finished=2)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray it started, as in a crash
    proc.wait()
    done_before = (pd.read_csv(results)["status"] == "FINISHED").sum()
    assert done_before < trials

    resumed = _resume_program(tmp_path, "r")
    assert resumed.returncode == 0, resumed.stderr[-2000:]

    table = pd.read_csv(results)
    assert len(table) == trials and table["trial_id"].is_unique
    assert (table["status"] == "FINISHED").all()

    from ray.tune import ExperimentAnalysis

    ray_trials = ExperimentAnalysis(str(tmp_path / "runs" / "r" / "ray")).trials
    assert len(ray_trials) == trials

    study = optuna.load_study(
        study_name="r", storage=f"sqlite:///{tmp_path / 'runs' / 'r' / 'optuna.db'}"
    )
    states = [t.state for t in study.trials]
    assert states.count(optuna.trial.TrialState.COMPLETE) == trials
    assert optuna.trial.TrialState.RUNNING not in states
    told = sorted(
        tuple(t.params[k] for k in sorted(t.params))
        for t in study.trials
        if t.state == optuna.trial.TrialState.COMPLETE
    )
    assert len(set(told)) == trials  # no suggestion repeated

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("mer-tune")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == trials
    assert len({c.data.tags["ray.trial_id"] for c in children}) == trials
    assert all(c.info.status == "FINISHED" for c in children)


def test_a_search_stopped_before_its_first_trial_resumes(search_env, tiny_dir, monkeypatch):
    from mer_tune.errors import SearchInterrupted
    from mer_tune.hpo import shared_stages, starting, tuner

    def ctrl_c(task, *args, **kwargs):
        task.cancel()  # as wait does on Ctrl-C
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:  # Ctrl-C while the shared stages train
        patch.setattr(shared_stages.SharedStagesTask, "wait", ctrl_c)
        with pytest.raises(SearchInterrupted, match="--resume early"):
            tiny_search(search_env, tiny_dir, trials=2, name="early")
    assert not (search_env / "runs" / "early" / "ray").exists()  # no trial had started

    def ctrl_c_at_start(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:  # Ctrl-C while a resume puts the data
        patch.setattr(starting, "start_trials_data", ctrl_c_at_start)
        with pytest.raises(SearchInterrupted, match="--resume early"):
            tuner.resume("early", storage=search_env / "runs")
    state = yaml.safe_load((search_env / "runs" / "early" / "search.yaml").read_text())
    store = MlflowClient(f"sqlite:///{search_env / 'mlflow.db'}")
    assert store.get_run(state["parent_run_id"]).info.status == "KILLED"
    res = tuner.resume("early", storage=search_env / "runs")
    assert (res.results["status"] == "FINISHED").sum() == 2
    client = MlflowClient(res.tracking_uri)
    assert client.get_run(res.parent_run_id).info.status == "FINISHED"
    children = client.search_runs(
        [res.experiment_id], f"tags.mlflow.parentRunId = '{res.parent_run_id}'"
    )
    assert len(children) == 2
    # Tune's state lost after trials ended: refused, not rerun over the recorded trials.
    import shutil

    shutil.rmtree(res.path / "ray")
    as_if_killed_before_its_end(res.path)
    with pytest.raises(MerTuneError, match="ray is missing while 2 trials are recorded"):
        tuner.resume("early", storage=search_env / "runs")


def test_a_search_that_fails_before_it_is_recorded_leaves_nothing_behind(
    search_env, tiny_dir, monkeypatch
):
    """The shared stages' task starts before the MLflow store opens: when opening it
    fails, the task is stopped and the search folder is gone, with the store's error."""
    from mer_tune.hpo import shared_stages, starting

    stopped = []
    cancel = shared_stages.SharedStagesTask.cancel

    def record_cancel(task):
        stopped.append(task)
        cancel(task)

    class BrokenStore:
        def __init__(self, *args, **kwargs):
            raise MerTuneError("the tracking store broke")

    monkeypatch.setattr(starting, "SearchRecorder", BrokenStore)
    monkeypatch.setattr(shared_stages.SharedStagesTask, "cancel", record_cancel)
    monkeypatch.setattr(shared_stages, "CANCEL_WAIT_S", 60.0)  # a loaded machine is slow to
    with pytest.raises(MerTuneError, match="the tracking store broke"):
        tiny_search(search_env, tiny_dir, trials=1, name="broken")
    import ray

    assert [task.stages for task in stopped] == [["pretrain", "finetune"]]
    ready, _ = ray.wait([stopped[0].ref], timeout=0)
    assert ready  # the task has stopped, not just been asked to
    assert not (search_env / "runs" / "broken").exists()


@pytest.mark.services  # starts Ray, in the program it runs
def test_a_search_run_as_a_program_exits_cleanly_and_leaves_no_ray_process(tmp_path, tiny_dir):
    """The program stops the Ray it started itself, and skips the interpreter's last
    garbage collection (cli._fast_exit): its results are complete all the same."""
    import psutil

    (tmp_path / "fast.yaml").write_text(yaml.safe_dump(FAST))
    (tmp_path / "space.yaml").write_text(LOW_THRESHOLDS_SPACE)
    cmd = [sys.executable, "-m", "mer_tune", "search", "--space", "space.yaml", "--trials", "2",
           "--data", str(tiny_dir), "--config", "fast.yaml", "--name", "p",
           "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--storage", "runs"]  # fmt: skip
    proc = subprocess.Popen(
        cmd, cwd=tmp_path, env=_env(), start_new_session=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    assert "verdict:" in out

    def left() -> list[str]:  # started by the search: Ray's processes
        names = []
        for p in psutil.process_iter(["name", "status"]):
            with contextlib.suppress(OSError, psutil.Error):
                if os.getsid(p.pid) == proc.pid and p.info["status"] != psutil.STATUS_ZOMBIE:
                    names.append(p.info["name"])
        return names

    # Ray's workers exit on their own once the raylet is gone, a moment after the
    # program: none may stay.
    deadline = time.monotonic() + 30
    while left() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert left() == []
    table = pd.read_csv(tmp_path / "runs" / "p" / "results.csv")
    assert (table["status"] == "FINISHED").sum() == 2
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("mer-tune").experiment_id])
    assert sorted(r.info.status for r in runs) == ["FINISHED"] * 3  # the parent and 2 trials


def test_trial_timeout_is_recorded_as_a_failure(search_env, tiny_dir):
    res = tiny_search(search_env, tiny_dir, trials=2, concurrency=1, trial_timeout=0.01, name="t")
    assert (res.results["status"] == "FAILED").all()
    assert res.results["error"].str.contains("--trial-timeout").all()
    assert res.best_config is None and not (res.path / "best_config.yaml").exists()
    runs = MlflowClient(res.tracking_uri).search_runs(
        [res.experiment_id], f"tags.mlflow.parentRunId = '{res.parent_run_id}'"
    )
    assert len(runs) == 2 and all(r.info.status == "FAILED" for r in runs)


@pytest.mark.slow
def test_a_search_whose_every_trial_failed_exits_1(search_env, tiny_dir):
    """As a program: each failed trial is one progress line (Tune's traceback per try and
    Optuna's warnings about a study without a finished trial are not printed), and the
    exit code says the search has no result."""
    args = ["search", "--space", "space.yaml", "--config", "fast.yaml", "--data", str(tiny_dir)]
    args += ["--trials", "2", "--name", "f", "--trial-timeout", "0.01", "--max-failures", "1"]
    done = subprocess.run(
        [sys.executable, "-m", "mer_tune", *args],
        cwd=search_env, env=_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    results = search_env / "mer-tune-runs" / "f" / "results.csv"
    assert done.returncode == 1 and done.stderr.strip().splitlines()[-1] == (
        f"error: every trial of search f failed; their errors are in {results} (column error)"
    )
    assert "Traceback" not in done.stderr and "[W " not in done.stderr
    assert len([line for line in done.stderr.splitlines() if " failed: " in line]) == 2
    # Past the timeout, or (a trial waiting on the other's cache lock) out of time to wait.
    assert pd.read_csv(results)["error"].str.contains("--trial-timeout|waited 0.01 s").all()


def test_a_cache_folder_that_cannot_be_made_is_refused_before_anything_runs(
    search_env, tiny_dir, capsys
):
    from test_cli import run_cli

    (search_env / "afile").write_text("a file where the cache folder should go")
    for where in ("afile", "afile/cache"):
        args = ["search", "--data", str(tiny_dir), "--cache-dir", where, "--name", "c"]
        code, _, stderr = run_cli(args, capsys)
        assert code == 2 and stderr.strip() == (
            f"error: --cache-dir {search_env / where}: {search_env / 'afile'} is a file, "
            "not a folder"
        )
    assert sorted(p.name for p in search_env.iterdir()) == ["afile", "fast.yaml", "space.yaml"]


def test_unwritable_storage_fails_before_anything_runs(search_env, tiny_dir):
    blocker = search_env / "not-a-folder"
    blocker.write_text("a file where the storage folder should go")
    with pytest.raises(MerTuneError, match="not-a-folder/runs: cannot write there"):
        search(
            space=str(search_env / "space.yaml"),
            trials=1,
            data=str(tiny_dir),
            tracking_uri=f"sqlite:///{search_env / 'mlflow.db'}",
            storage=str(blocker / "runs"),
        )


def test_empty_labelled_set_is_one_clear_line(tmp_path, capsys):
    from test_cli import run_cli

    root = write_dataset(tmp_path / "d", n_lab=6, n_unl=4)
    (root / "label-disdim.csv").write_text("name,discrete\n")
    code, _, stderr = run_cli(["run", "--data", str(root), "--out", str(tmp_path / "o")], capsys)
    assert (
        code == 1
        and stderr.strip() == f"error: {root}: no labelled samples (the labelled set is empty)"
    )


def test_debug_shows_the_traceback(capsys):
    from test_cli import run_cli

    with pytest.raises(MerTuneError):
        run_cli(["--debug", "run", "--data", "synthetic:huge"], capsys)


def test_max_failures_retries_a_failing_trial_in_the_same_run(search_env, tiny_dir):
    (search_env / "bad_lr.yaml").write_text(
        "params:\n  optim.lr: {type: categorical, choices: [1.0e+30]}\n"
    )
    res = tiny_search(
        search_env,
        tiny_dir,
        space=str(search_env / "bad_lr.yaml"),
        trials=1,
        concurrency=1,
        max_failures=1,
        name="mf",
    )
    from ray.tune import ExperimentAnalysis

    (trial,) = ExperimentAnalysis(str(res.path / "ray")).trials
    assert trial.run_metadata.num_failures == 2  # the first try and one retry
    assert res.results["status"].tolist() == ["FAILED"]
    runs = MlflowClient(res.tracking_uri).search_runs(
        [res.experiment_id], f"tags.mlflow.parentRunId = '{res.parent_run_id}'"
    )
    assert len(runs) == 1 and runs[0].info.status == "FAILED"


@pytest.mark.slow
@pytest.mark.parametrize("stop, code", [("ctrl-c", 130), ("sigterm", 143)])
def test_ctrl_c_or_sigterm_marks_the_search_killed_tells_how_to_resume(
    tmp_path, tiny_dir, stop, code
):
    proc, results, uri = _slow_search(
        tmp_path, tiny_dir, "c", 6, finished=1, stderr=subprocess.PIPE
    )
    if stop == "ctrl-c":
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in a terminal reaches the whole group
    else:
        os.kill(proc.pid, signal.SIGTERM)  # `kill`, a scheduler, a container stop
    _, stderr = proc.communicate(timeout=180)
    assert proc.returncode == code, stderr[-2000:]
    assert "mer-tune search --resume c" in stderr.strip().splitlines()[-1]
    assert "Traceback" not in stderr and "SIGABRT" not in stderr, stderr[-2000:]
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("mer-tune")
    runs = client.search_runs([exp.experiment_id])
    parent = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert [p.info.status for p in parent] == ["KILLED"]
    assert "RUNNING" not in {r.info.status for r in runs}
    assert "RUNNING" not in set(pd.read_csv(results)["status"])
    resumed = _resume_program(tmp_path, "c")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert client.get_run(parent[0].info.run_id).info.status == "FINISHED"
    assert (pd.read_csv(results)["status"] == "FINISHED").sum() == 6


def _saved_from_two_moments(ray_dir: Path, last: str) -> None:
    """Tune's files in a finished search's `ray_dir` made as a driver killed while Tune
    copied them can leave them. "running": the trials saved before Tune made the last
    one, the searcher and limiter after it started. "unseen": the searcher and generator
    saved before the last trial was suggested, the trials after it ended."""
    import ray.cloudpickle as cloudpickle

    from mer_tune.hpo.tune_state import newest

    trials_file = newest(ray_dir, "experiment_state-*.json")
    trials = json.loads(trials_file.read_text())
    last_id = json.loads(trials["trial_data"][-1][0])["trial_id"]
    searcher_file = newest(ray_dir, "searcher-state-*.pkl")
    saved = pickle.loads(searcher_file.read_bytes())
    old = saved["_ot_study"]
    study = optuna.create_study(
        study_name=old.study_name, directions=old.directions, sampler=old.sampler
    )
    numbers = {k: t.number for k, t in saved["_ot_trials"].items()}
    for t in old.get_trials():
        if t.number == numbers[last_id] and last == "running":
            t = optuna.trial.create_trial(
                state=optuna.trial.TrialState.RUNNING,
                params=t.params,
                distributions=t.distributions,
            )
        if t.number != numbers[last_id] or last == "running":
            study.add_trial(t)
    saved["_ot_study"] = study
    saved["_completed_trials"].discard(last_id)
    if last == "unseen":
        del numbers[last_id]
    ids = [t._trial_id for t in study.get_trials(deepcopy=False)]
    saved["_ot_trials"] = {k: optuna.trial.Trial(study, ids[n]) for k, n in numbers.items()}
    searcher_file.write_bytes(pickle.dumps(saved))

    gen_file = newest(ray_dir, "search_gen_state-*.json")
    gen = cloudpickle.loads(gen_file.read_bytes())
    limiter = gen["name:ConcurrencyLimiter"]
    if last == "running":
        trials["trial_data"].pop()
        trials_file.write_text(json.dumps(trials))
        limiter["live_trials"], limiter["num_unfinished_live_trials"] = {last_id}, 1
    else:
        gen["counter"] -= 1
    gen_file.write_bytes(cloudpickle.dumps(gen))


def _resumed_study(ray_dir: Path):
    from mer_tune.hpo.tune_state import newest

    return pickle.loads(newest(ray_dir, "searcher-state-*.pkl").read_bytes())["_ot_study"]


@pytest.mark.parametrize("last", ["running", "unseen"])
def test_a_resume_brings_tunes_state_from_two_moments_in_line(search_env, tiny_dir, last):
    """A kill while Tune copied its state once left a searcher that waited for a trial
    Tune never made: the resumed search hung. Now Tune's trials are the truth: the resume
    ends with every trial once, a lost suggestion asked again, and a study that holds
    each trial Tune ran, told its result."""
    from mer_tune.hpo import tuner
    from mer_tune.hpo.tune_state import LOST

    first = tiny_search(search_env, tiny_dir, trials=3, concurrency=1, name=last)
    _saved_from_two_moments(first.path / "ray", last)
    as_if_killed_before_its_end(first.path)
    notes = []
    res = tuner.resume(
        last, storage=search_env / "runs", on_event=lambda *a, row: notes.append(row)
    )

    assert len(res.results) == 3 and res.results["trial_id"].is_unique
    assert (res.results["status"] == "FINISHED").all()
    study = _resumed_study(res.path / "ray")
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert sorted(t.value for t in complete) == pytest.approx(sorted(res.results["weighted_f1"]))
    assert optuna.trial.TrialState.RUNNING not in [t.state for t in study.trials]
    failed = [t for t in study.trials if t.state == optuna.trial.TrialState.FAIL]
    if last == "running":  # asked again: the third trial run has the lost one's values
        assert len(failed) == 1 and LOST in failed[0].user_attrs
        assert failed[0].params == complete[-1].params
    else:
        assert failed == []
    assert any("brought in line" in n.get("text", "") for n in notes)


def test_a_search_killed_during_tunes_first_save(search_env, tiny_dir):
    """Tune's first save lacks a file only when the driver died as the first trial
    started: with no trial ended the trials start afresh; with ended trials recorded the
    resume is refused and nothing is removed."""
    from mer_tune.hpo import tuner
    from mer_tune.hpo.tune_state import newest

    first = tiny_search(search_env, tiny_dir, trials=2, concurrency=1, name="first")
    as_if_killed_before_its_end(first.path)
    newest(first.path / "ray", "searcher-state-*.pkl").unlink()
    kept = sorted(p.name for p in (first.path / "ray").iterdir())
    with pytest.raises(MerTuneError, match="lacks Tune's saved searcher while 2 trials"):
        tuner.resume("first", storage=search_env / "runs")
    assert sorted(p.name for p in (first.path / "ray").iterdir()) == kept

    table = pd.read_csv(first.path / "results.csv")
    table.assign(status="RUNNING").to_csv(first.path / "results.csv", index=False)
    res = tuner.resume("first", storage=search_env / "runs")
    assert len(res.results) == 2 and (res.results["status"] == "FINISHED").all()
    assert set(res.results["trial_id"]).isdisjoint(table["trial_id"])  # run afresh
    runs = MlflowClient(res.tracking_uri).search_runs(
        [res.experiment_id], f"tags.mlflow.parentRunId = '{res.parent_run_id}'"
    )
    assert sorted(r.data.tags["ray.trial_id"] for r in runs) == sorted(res.results["trial_id"])


def test_a_full_disk_stops_the_search_in_one_line_and_it_resumes(search_env, tiny_dir, monkeypatch):
    """No traceback and no RUNNING parent run when the disk fills: one line naming the
    path and the free space, and the resume command; freed, the search resumes."""
    import errno

    from mer_tune.hpo import context, tuner

    real = context.write_text
    writes = []

    def fills_up(path, text):
        writes.append(path)
        if len(writes) >= 2:  # the first trial's row is written, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(path, text)

    monkeypatch.setattr(context, "write_text", fills_up)
    with pytest.raises(MerTuneError) as err:
        tiny_search(search_env, tiny_dir, trials=3, concurrency=1, name="full")
    message = str(err.value)
    assert "results.csv: the disk is full (" in message and "MiB free)" in message
    assert message.endswith(f"mer-tune search --resume full --storage {search_env / 'runs'}")
    state = yaml.safe_load((search_env / "runs" / "full" / "search.yaml").read_text())
    store = MlflowClient(f"sqlite:///{search_env / 'mlflow.db'}")
    assert store.get_run(state["parent_run_id"]).info.status == "KILLED"
    monkeypatch.setattr(context, "write_text", real)  # space freed
    res = tuner.resume("full", storage=search_env / "runs")
    assert (res.results["status"] == "FINISHED").sum() == 3
