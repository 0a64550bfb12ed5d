"""Real searches: a local Ray, Optuna's TPE and a sqlite MLflow store, on tiny data."""

import io
import json
import shutil

import optuna
import pandas as pd
import pytest
import yaml
from conftest import FAST, tiny_search
from mlflow.tracking import MlflowClient

from mer_tune.data.pack import load
from mer_tune.errors import MerTuneError, UsageError
from mer_tune.hpo.spaces import load_space
from mer_tune.method.config import load_config

SPACE_KEYS = [
    "self_training.thresholds.neutral",
    "self_training.thresholds.angry",
    "self_training.thresholds.worried",
]


def test_cli_search_logs_every_trial_to_mlflow(search_env, tiny_dir, capsys):
    from test_cli import run_cli

    code, stdout, stderr = run_cli(
        [
            "search",
            "--space",
            str(search_env / "space.yaml"),
            "--trials",
            "4",
            "--data",
            str(tiny_dir),
            "--config",
            str(search_env / "fast.yaml"),
            "--concurrency",
            "2",
            "--name",
            "s1",
            "--holdout",
            "0",
        ],
        capsys,
    )
    assert code == 0, stderr
    assert "best weighted F1 (inner, what the search selected on):" in stdout
    assert "no outer holdout (--holdout 0): the best weighted F1 is the maximum" in stderr
    assert "verdict" not in stdout
    assert "mlflow ui --backend-store-uri sqlite:///" in stderr
    path = search_env / "mer-tune-runs" / "s1"
    results = pd.read_csv(path / "results.csv")
    assert len(results) == 4 and (results["status"] == "FINISHED").all()
    assert set(SPACE_KEYS) <= set(results.columns)
    assert "pseudo_round1_surprise" in results.columns  # per round, per class

    client = MlflowClient(f"sqlite:///{search_env / 'mlflow.db'}")
    exp = client.get_experiment_by_name("mer-tune")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert parents[0].data.metrics["best_weighted_f1"] == pytest.approx(
        results["weighted_f1"].max()
    )
    assert len(children) == 4
    for child in children:
        assert child.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert child.info.status == "FINISHED"
        assert set(SPACE_KEYS) <= set(child.data.params)
        assert {
            "weighted_f1",
            "f1_neutral",
            "pseudo_precision",
            "seconds_finetune",
            "pseudo_round1_angry",
        } <= set(child.data.metrics)
        assert child.data.tags["ray.node_ip"]
        # Per-epoch validation F1: every epoch a trial trained (cached stages train none).
        assert client.get_metric_history(child.info.run_id, "val_f1")
    # The space searches thresholds alone: pretraining and finetuning, which every trial
    # shares, were trained once before the trials, and every trial found them cached.
    assert "pretrain and finetune trained once for every trial" in stderr
    for child in children:
        cached = set(child.data.tags["mer_tune.cached_stages"].split(","))
        assert cached == {"pretrain", "finetune"}, cached
    # Their per-epoch curves are on the parent run: finetuning's epochs (FAST: 4).
    finetune = client.get_metric_history(parents[0].info.run_id, "shared/fold0/finetune/val_f1")
    assert len(finetune) == FAST["finetune"]["epochs"]
    pretrain = client.get_metric_history(parents[0].info.run_id, "shared/pretrain/pretrain_loss")
    assert len(pretrain) == FAST["pretrain"]["epochs"]
    state = yaml.safe_load((path / "search.yaml").read_text())
    assert state["shared_stages"]["stages"] == ["pretrain", "finetune"]
    assert state["cache_dir"] == "cache"  # its own folder's: a copied search reads its copy
    scores = sorted(c.data.metrics["weighted_f1"] for c in children)
    assert scores == pytest.approx(sorted(results["weighted_f1"]))

    # What a user looks at: the trial's config and confusion matrix, the search's plots.
    child_files = {a.path for a in client.list_artifacts(children[0].info.run_id)}
    assert {"config.yaml", "confusion_matrix.png"} <= child_files
    plots = {a.path for a in client.list_artifacts(parents[0].info.run_id, "plots")}
    assert {"plots/optimization_history.png", "plots/parallel_coordinate.png"} <= plots
    code, report_json, _ = run_cli(["report", "s1", "--format", "json"], capsys)
    report = json.loads(report_json)
    assert (
        code == 0
        and report["finished"] == 4
        and report["best_weighted_f1"] == results["weighted_f1"].max()
    )
    assert set(report["importances"]) == set(SPACE_KEYS)
    code, report_csv, _ = run_cli(["report", "s1", "--format", "csv", "--top", "2"], capsys)
    assert len(pd.read_csv(io.StringIO(report_csv))) == 2
    code, table, _ = run_cli(["report", "s1"], capsys)
    assert "best weighted F1" in table and "parameter importances" in table
    shutil.copytree(path, path.parent / "s1-copy")  # a copied or renamed search reports too
    code, copied, _ = run_cli(["report", "s1-copy", "--format", "json"], capsys)
    assert code == 0 and set(json.loads(copied)["importances"]) == set(SPACE_KEYS)

    # best_config.yaml is a config `mer-tune run --config` accepts and reproduces.
    best = load_config(path / "best_config.yaml")
    top = results.loc[results["weighted_f1"].idxmax()]
    for key in SPACE_KEYS:
        section, _, cls = key.rpartition(".")
        assert best.self_training.thresholds[cls] == pytest.approx(top[key])
    import torch

    from mer_tune.method import pipeline

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the trial
    try:
        again = pipeline.run(load(tiny_dir), best)
    finally:
        torch.set_num_threads(threads)
    assert again.weighted_f1 == pytest.approx(top["weighted_f1"], abs=0.02)


def test_optuna_drives_the_search_and_the_seed_repeats_it(search_env, tiny_dir):
    a = tiny_search(search_env, tiny_dir, trials=4, concurrency=1, seed=7, name="a")
    b = tiny_search(search_env, tiny_dir, trials=4, concurrency=1, seed=7, name="b")
    c = tiny_search(search_env, tiny_dir, trials=4, concurrency=1, seed=8, name="c")
    # A plain Optuna study with the same sampler, seed and first point, told the same
    # scores, asks for exactly the values the search ran: the study drives the search.
    space = load_space(str(search_env / "space.yaml"))
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=7))
    study.enqueue_trial({k: a.results.iloc[0][k] for k in SPACE_KEYS})
    for row in a.results.to_dict("records"):
        trial = study.ask(space.params)
        assert trial.params == pytest.approx({k: row[k] for k in SPACE_KEYS})
        study.tell(trial, row["weighted_f1"])
    # The first point is the base config's values (clipped into the space).
    assert a.results.iloc[0]["self_training.thresholds.neutral"] == 0.25  # FAST's value
    pd.testing.assert_frame_equal(a.results[SPACE_KEYS], b.results[SPACE_KEYS])
    assert not a.results[SPACE_KEYS].iloc[1:].equals(c.results[SPACE_KEYS].iloc[1:])
    # The study is kept beside the results, for optuna-dashboard and Optuna's plots.
    kept = optuna.load_study(study_name="a", storage=f"sqlite:///{a.path / 'optuna.db'}")
    assert [t.params for t in kept.trials] == [t.params for t in study.trials]


def test_a_failing_trial_is_recorded_and_the_search_goes_on(search_env, tiny_dir):
    (search_env / "lr.yaml").write_text(
        "params:\n  optim.lr: {type: categorical, choices: [0.003, 1.0e+30]}\n"
    )
    res = tiny_search(
        search_env, tiny_dir, space=str(search_env / "lr.yaml"), trials=4, seed=3, name="f"
    )
    status = res.results.set_index("optim.lr")["status"]
    assert (res.results["status"] == "FAILED").any(), res.results
    assert (res.results["status"] == "FINISHED").any(), res.results
    assert set(status[status == "FAILED"].index) == {1e30}
    client = MlflowClient(res.tracking_uri)
    runs = client.search_runs(
        [res.experiment_id], f"tags.mlflow.parentRunId = '{res.parent_run_id}'"
    )
    failed = [r for r in runs if r.info.status == "FAILED"]
    assert len(failed) == (res.results["status"] == "FAILED").sum()
    assert all("loss became" in r.data.tags["error"] for r in failed), [
        r.data.tags.get("error") for r in failed
    ]
    assert len(runs) == 4


@pytest.mark.parametrize(
    "kw, error, message",
    [
        ({"space": "nope"}, UsageError, "available: decision, full, noise"),
        ({"trials": 0}, UsageError, "at least 1"),
        ({"gpus_per_trial": 4}, UsageError, "the cluster has 0 GPUs"),
        ({"tracking_uri": "http://127.0.0.1:9"}, MerTuneError, "MLflow server unreachable"),
    ],
)
def test_bad_search_input_fails_before_any_trial(search_env, tiny_dir, kw, error, message):
    with pytest.raises(error, match=message):
        tiny_search(search_env, tiny_dir, name="bad", **kw)
    assert not (search_env / "runs" / "bad" / "ray").exists()


@pytest.mark.slow  # a subprocess that imports Ray: CI runs it, `make check` not
def test_unreachable_ray_address_is_a_clear_error(tmp_path):
    import subprocess
    import sys

    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mer_tune",
            "search",
            "--address",
            "127.0.0.1:9",
            "--trials",
            "1",
            "--data",
            "synthetic:tiny",
            "--tracking-uri",
            f"sqlite:///{tmp_path / 'm.db'}",
            "--storage",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "error: --address 127.0.0.1:9: no Ray cluster answers there"
    ]


def test_a_conditional_parameter_runs_only_in_the_trials_that_use_it(search_env, tiny_dir):
    (search_env / "cond.yaml").write_text(
        "params:\n"
        "  noise.kind: {type: categorical, choices: [ddpm, gaussian]}\n"
        "  noise.gaussian_std: {type: float, low: 0.1, high: 2.0, when: {noise.kind: gaussian}}\n"
    )
    res = tiny_search(
        search_env, tiny_dir, space=str(search_env / "cond.yaml"), trials=4, seed=3, name="cond"
    )
    table = res.results.sort_values("trial")
    assert list(table["status"]) == ["FINISHED"] * 4
    assert table.iloc[0]["noise.kind"] == "ddpm"  # the baseline
    gaussian = table["noise.kind"] == "gaussian"
    assert gaussian.any() and (~gaussian).any()
    assert table.loc[gaussian, "noise.gaussian_std"].notna().all()
    assert table.loc[~gaussian, "noise.gaussian_std"].isna().all()
    kept = optuna.load_study(study_name="cond", storage=f"sqlite:///{res.path / 'optuna.db'}")
    for trial in kept.trials:
        assert ("noise.gaussian_std" in trial.params) == (trial.params["noise.kind"] == "gaussian")


def test_a_warm_started_search_imports_the_earlier_trials(search_env, tiny_dir):
    first = tiny_search(search_env, tiny_dir, trials=2, concurrency=1, seed=7, name="first")
    assert (first.results["status"] == "FINISHED").all()
    again = tiny_search(
        search_env, tiny_dir, trials=2, concurrency=1, seed=7, name="again",
        from_searches=["first"],
    )  # fmt: skip
    assert again.notes[0].startswith("warm start: 2 earlier trials imported (first 2 of 2)")
    assert len(again.results) == 2  # its own trials only; the baseline runs again as trial 0
    state = yaml.safe_load((again.path / "search.yaml").read_text())
    assert state["from_searches"] == ["first"] and state["warm_start_trials"] == 2
    with pytest.raises(UsageError, match="its outer holdout differs"):
        tiny_search(search_env, tiny_dir, trials=1, seed=8, name="other", from_searches=["first"])
    assert not (search_env / "runs" / "other").exists()  # refused before anything is made


def test_a_multi_objective_search_keeps_its_pareto_front_and_the_picked_point(
    search_env, tiny_dir, capsys
):
    from test_cli import run_cli

    from mer_tune.hpo.objectives import pareto_front

    goals = ["weighted_f1", "min_class_f1"]
    res = tiny_search(
        search_env, tiny_dir, trials=4, seed=3, name="mo", objectives=goals,
        pick="max min_class_f1 where weighted_f1>=0.0",
    )  # fmt: skip
    table = res.results
    assert {"min_class_f1", "train_seconds", "pseudo_precision"} <= set(table.columns)
    front = pareto_front(table, goals)
    saved = pd.read_csv(res.path / "pareto.csv")
    assert list(saved["trial"]) == list(front["trial"])
    configs = sorted(p.name for p in (res.path / "pareto").glob("*.yaml"))
    assert configs == sorted(f"trial-{t:03d}.yaml" for t in front["trial"])
    # --pick: the front point with the best worst-class F1 is best_config.yaml.
    top = front.loc[front["min_class_f1"].idxmax()]
    picked = load_config(res.path / "best_config.yaml")
    assert picked.self_training.thresholds["neutral"] == pytest.approx(
        top["self_training.thresholds.neutral"]
    )
    study = optuna.load_study(study_name="mo", storage=f"sqlite:///{res.path / 'optuna.db'}")
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MAXIMIZE"]
    kept = sorted(v for t in study.best_trials for v in t.values)  # Optuna: the same front
    assert kept == pytest.approx(sorted(front[goals].to_numpy().ravel().tolist()))
    # The front points were confirmed on the holdout.
    confirmed = pd.read_csv(res.path / "confirm.csv")
    assert set(front["trial"]) <= set(confirmed["trial"])
    client = MlflowClient(f"sqlite:///{search_env / 'mlflow.db'}")
    parent = client.get_run(res.parent_run_id)
    assert parent.data.tags["mer_tune.pareto_trials"] == ",".join(str(t) for t in front["trial"])
    names = {a.path for a in client.list_artifacts(res.parent_run_id)}
    assert {"pareto.csv", "pareto"} <= names
    # A pick no point meets: one line naming the closest; the front stays.
    code, _, err = run_cli(
        [
            "pick",
            "mo",
            "max weighted_f1 where min_class_f1>=1.5",
            "--storage",
            str(search_env / "runs"),
        ],
        capsys,
    )
    assert code == 2 and "closest: trial" in err and (res.path / "pareto.csv").exists()
    code, out, _ = run_cli(
        ["pick", "mo", "max weighted_f1", "--storage", str(search_env / "runs")], capsys
    )
    best = int(front.loc[front["weighted_f1"].idxmax(), "trial"])
    assert code == 0 and out.startswith(f"trial {best} -> ")
    code, out, _ = run_cli(
        ["report", "mo", "--storage", str(search_env / "runs"), "--format", "csv",
         "--section", "pareto"],
        capsys,
    )  # fmt: skip
    assert code == 0 and list(pd.read_csv(io.StringIO(out))["trial"]) == list(front["trial"])


def test_the_fold_pruner_stops_trials_whose_folds_are_behind(search_env, tiny_dir):
    (search_env / "lr.yaml").write_text(
        "params:\n  optim.lr: {type: categorical, choices: [0.003, 1.0e-6]}\n"
    )
    with pytest.raises(UsageError, match="needs several folds"):
        tiny_search(search_env, tiny_dir, scheduler="folds", folds=1, name="one")
    res = tiny_search(
        search_env, tiny_dir, space=str(search_env / "lr.yaml"), trials=5, concurrency=1,
        folds=5, scheduler="folds", seed=1, name="folds", confirm_top=0,
    )  # fmt: skip
    table = res.results.set_index("trial")
    slow = table["optim.lr"] < 1e-3  # a learning rate that cannot learn in 4 epochs
    assert slow.any() and (table.loc[slow, "status"] == "PRUNED").all()
    assert (table.loc[slow, "folds_run"] == 4).all()  # 4 folds all behind: p = 1/16
    assert (table.loc[~slow, "status"] == "FINISHED").all()
    study = optuna.load_study(study_name="folds", storage=f"sqlite:///{res.path / 'optuna.db'}")
    assert sum(t.state.name == "PRUNED" for t in study.trials) == int(slow.sum())
    client = MlflowClient(f"sqlite:///{search_env / 'mlflow.db'}")
    pruned = table[slow].iloc[0]["trial_id"]
    runs = client.search_runs(
        [res.experiment_id], f"tags.`mlflow.parentRunId` = '{res.parent_run_id}'"
    )
    run = next(r for r in runs if r.data.tags.get("ray.trial_id") == pruned)
    assert run.info.status == "KILLED"
    history = client.get_metric_history(run.info.run_id, "fold_weighted_f1")
    assert len(history) == 4
