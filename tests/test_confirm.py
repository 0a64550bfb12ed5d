"""The outer holdout, confirm step and verdict of real searches (local Ray, sqlite MLflow)."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import as_if_killed_before_its_end, tiny_search
from mlflow.tracking import MlflowClient
from test_cli import run_cli

from mer_tune.data.pack import load
from mer_tune.errors import MerTuneError
from mer_tune.hpo.confirm_step import confirm_search
from mer_tune.method.config import load_config

KEYS = ["self_training.thresholds.neutral", "self_training.thresholds.angry"]


def test_no_trial_sees_the_holdout_and_the_winner_is_confirmed_on_it(search_env, tiny_dir, capsys):
    res = tiny_search(search_env, tiny_dir, trials=4, seed=1, name="h", confirm_top=10)
    path = res.path
    # Trial 0 is the base config's point (FAST's), even with two trials starting at once.
    assert res.results.set_index("trial").loc[0, KEYS].tolist() == [0.25, 0.25]
    data = load(tiny_dir)
    held = pd.read_csv(path / "holdout.csv")
    assert len(held) == res.holdout_size == 36  # 20% of 180, stratified
    held_idx = set(np.flatnonzero(np.isin(data.names, held["name"])).tolist())
    classes = np.asarray(data.classes, dtype=object)
    assert (
        classes[data.labels[sorted(held_idx)]]
        == held.set_index("name").loc[data.names[sorted(held_idx)], "discrete"]
    ).all()

    # Every trial recorded which samples it fit on, picked epochs on and scored.
    outputs = sorted((path / "trial-outputs").glob("*.npz"))
    assert len(outputs) == 4
    for f in outputs:
        with np.load(f, allow_pickle=False) as npz:
            labelled = np.isin(npz["split_role"], ["fit", "select", "scored"])
            assert labelled.sum() > 100
            assert not set(npz["split_index"][labelled].tolist()) & held_idx
            assert held_idx <= set(npz["idx"].tolist())  # predicted, out of sight
            # ... and each fold model's own vote on the holdout, for the verdict's spread
            folds = len(set(npz["split_fold"].tolist()))
            assert set(npz["fold_idx"].tolist()) == held_idx
            assert npz["fold_votes"].shape == (folds, 36, len(data.classes))
            assert np.allclose(npz["fold_votes"].sum(-1), 1, atol=1e-4)

    # Nothing of the holdout shows before the confirm step: no trial metric mentions it.
    client = MlflowClient(res.tracking_uri)
    children = client.search_runs(
        [res.experiment_id], f"tags.mlflow.parentRunId = '{res.parent_run_id}'"
    )
    assert len(children) == 4
    assert not any("holdout" in k for c in children for k in c.data.metrics)

    # The confirm step: every finished trial here (--confirm-top 10 > 3 others), baseline 0.
    table = res.confirm
    assert sorted(table["trial"]) == [0, 1, 2, 3]
    assert table.set_index("trial").loc[0, "role"] == "baseline"
    assert any("only 3 finished trial(s) besides the baseline" in n for n in res.notes)
    # With one fold model per trial and no retraining, the summary says what the
    # verdict's intervals cannot see.
    blind = any("not training randomness" in n for n in res.notes)
    assert blind == (folds == 1)
    gap = table["inner_f1"] - table["holdout_f1"]
    assert np.allclose(gap, table["optimism_gap"])
    assert (table["holdout_low"] <= table["holdout_f1"]).all()
    assert (table["holdout_f1"] <= table["holdout_high"]).all()
    assert "truth_f1" in table  # synthetic data: the test names' truth is known
    # Each candidate's gain is also adjusted for the three candidates (Holm): never a
    # smaller p-value, never a narrower interval.
    cands = table[table["role"] == "candidate"]
    assert (cands["p_adjusted"] >= cands["p_value"]).all() and (cands["p_adjusted"] <= 1).all()
    assert (cands["adjusted_low"] <= cands["gain_low"] + 1e-12).all()
    assert (cands["adjusted_high"] >= cands["gain_high"] - 1e-12).all()
    v = res.verdict
    written_verdict = json.loads((path / "verdict.json").read_text())
    assert written_verdict["candidates"] == 3
    assert written_verdict["p_adjusted"] == pytest.approx(
        float(cands.set_index("trial").loc[v.winner, "p_adjusted"])
    )
    assert v.outcome in {"gain", "no gain", "loss"} and v.text
    adopted = int(table.loc[table["adopted"], "trial"].iloc[0])
    assert adopted == v.adopted
    if v.outcome != "gain":
        assert adopted == 0
    best = load_config(path / "best_config.yaml")
    row = res.results.set_index("trial").loc[adopted]
    for key in KEYS:
        assert best.self_training.thresholds[key.rpartition(".")[2]] == pytest.approx(row[key])
    # results.csv: holdout columns on the confirmed rows only
    written = pd.read_csv(path / "results.csv")
    assert written["holdout_f1"].notna().sum() == 4
    assert set(written.loc[written["confirmed"] == "adopted", "trial"]) == {adopted}

    # The MLflow parent carries the outcome.
    parent = client.get_run(res.parent_run_id)
    assert parent.info.status == "FINISHED"
    assert {
        "holdout_f1",
        "optimism_gap",
        "gain_vs_baseline",
        "gain_vs_baseline_low",
        "gain_vs_baseline_high",
        "gain_vs_baseline_p_adjusted",
        "truth_f1_adopted",
        "truth_f1_baseline",
        "best_weighted_f1",
    } <= set(parent.data.metrics)
    assert parent.data.tags["mer_tune.verdict"] == v.text
    files = {a.path for a in client.list_artifacts(res.parent_run_id)}
    assert {"holdout.csv", "confirm.csv", "verdict.json"} <= files
    assert "plots/confirm.png" in {
        a.path for a in client.list_artifacts(res.parent_run_id, "plots")
    }

    # `mer-tune confirm` again: the same answer (deterministic for the search's seed).
    before = (path / "confirm.csv").read_text()
    code, out, err = run_cli(
        ["confirm", "h", "--storage", str(search_env / "runs"), "--confirm-top", "10"], capsys
    )
    assert code == 0, err
    assert (path / "confirm.csv").read_text() == before
    assert f"verdict: {v.text}" in out
    # ... and the report shows it in every format.
    code, text, _ = run_cli(["report", "h", "--storage", str(search_env / "runs")], capsys)
    assert "confirmed on the outer holdout (36 samples)" in text and v.text in text
    code, js, _ = run_cli(
        ["report", "h", "--storage", str(search_env / "runs"), "--format", "json"], capsys
    )
    assert json.loads(js)["confirm"]["verdict"]["text"] == v.text
    code, csv, _ = run_cli(
        [
            "report",
            "h",
            "--storage",
            str(search_env / "runs"),
            "--format",
            "csv",
            "--section",
            "confirm",
        ],
        capsys,
    )
    assert len(pd.read_csv(__import__("io").StringIO(csv))) == 4


def test_resume_keeps_the_holdout_and_refuses_changed_data(search_env, tiny_dir, capsys):
    data_dir = search_env / "data"
    shutil.copytree(tiny_dir, data_dir, ignore=shutil.ignore_patterns(".mer-tune-pack"))
    res = tiny_search(search_env, data_dir, trials=2, name="r", confirm_top=1)
    held = (res.path / "holdout.csv").read_text()
    state = yaml.safe_load((res.path / "search.yaml").read_text())
    assert state["dataset"]["spec"] == str(data_dir.resolve())
    # A finished search has nothing to resume: refused, nothing rewritten.
    before = {p: p.stat().st_mtime_ns for p in res.path.rglob("*")}
    resume_r = ["search", "--resume", "r", "--storage", str(search_env / "runs")]
    capsys.readouterr()  # what the search printed
    code, _, err = run_cli(resume_r, capsys)
    assert code == 2 and "--resume r: the search finished at " in err
    assert "mer-tune report r" in err and len(err.strip().splitlines()) == 1
    assert {p: p.stat().st_mtime_ns for p in res.path.rglob("*")} == before
    # Given with another option, which it would ignore: refused as well.
    code, _, err = run_cli([*resume_r, "--trials", "5"], capsys)
    assert code == 2 and "--trials with --resume: a resumed search keeps" in err
    # Resuming from another directory finds the same data and the same holdout.
    as_if_killed_before_its_end(res.path)
    again_dir = search_env / "elsewhere"
    again_dir.mkdir()
    code, _, err = run_cli(
        ["search", "--resume", "r", "--storage", str(search_env / "runs")],
        capsys,
        cwd=again_dir,
    )
    assert code == 0, err
    assert (res.path / "holdout.csv").read_text() == held
    as_if_killed_before_its_end(res.path)
    # Relabel one sample: the data is no longer the search's; refuse, change nothing.
    labels = pd.read_csv(data_dir / "label-disdim.csv")
    labels.loc[0, "discrete"] = "surprise" if labels.loc[0, "discrete"] != "surprise" else "sad"
    labels.to_csv(data_dir / "label-disdim.csv", index=False)
    results = (res.path / "results.csv").read_text()
    code, _, err = run_cli(
        ["search", "--resume", "r", "--storage", str(search_env / "runs")], capsys
    )
    assert code == 1
    assert err.strip().splitlines()[-1].startswith("error: ")
    assert "has changed since the search started" in err and len(err.strip().splitlines()) == 1
    assert (res.path / "results.csv").read_text() == results


def test_confirm_refuses_a_search_without_finished_trials(tmp_path):
    path = tmp_path / "runs" / "empty"
    path.mkdir(parents=True)
    (path / "search.yaml").write_text(yaml.safe_dump({"holdout_size": 10}))
    pd.DataFrame({"trial": [0], "trial_id": ["a"], "status": ["FAILED"]}).to_csv(
        path / "results.csv", index=False
    )
    (path / "base_config.yaml").write_text("{}\n")
    (path / "space.yaml").write_text("params:\n  optim.lr: {type: float, low: 0.001, high: 0.01}\n")
    with pytest.raises(MerTuneError, match="empty: no finished trial to confirm"):
        confirm_search(path)


def test_bad_holdout_is_one_line_before_anything_is_written(search_env, tiny_dir, capsys):
    code, _, err = run_cli(
        [
            "search",
            "--data",
            str(tiny_dir),
            "--holdout",
            "0.7",
            "--name",
            "x",
            "--storage",
            str(search_env / "runs"),
        ],
        capsys,
    )
    assert code == 2
    assert err.strip() == "error: --holdout 0.7: must be between 0 and 0.5"
    assert not (search_env / "runs" / "x").exists()


def test_confirm_seeds_retrain_each_candidate_on_all_non_holdout_data(search_env, tiny_dir):
    res = tiny_search(search_env, tiny_dir, trials=2, name="s", confirm_top=1, confirm_seeds=2)
    table = res.confirm.set_index("trial")
    assert sorted(table.index) == [0, 1]
    assert (
        table[["retrained_f1", "retrained_sd", "retrained_low", "retrained_high"]]
        .notna()
        .all()
        .all()
    )
    assert (table["retrained_low"] <= table["retrained_f1"]).all()
    verdict = json.loads((res.path / "verdict.json").read_text())
    assert verdict["confirm_seeds"] == 2 and verdict["text"] == res.verdict.text
    assert not any("not training randomness" in n for n in res.notes)


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda p: p.write_bytes(p.read_bytes()[:100]), "cannot read the trial's predictions"),
        (lambda p: np.savez(str(p)[:-4], other=np.zeros(3)), "not a trial's predictions"),
        (lambda p: p.write_text("hello"), "cannot read the trial's predictions"),
    ],
    ids=["truncated", "foreign", "text"],
)
def test_a_damaged_trial_output_is_one_line_naming_it(tmp_path, damage, message):
    from mer_tune.hpo.confirm import load_trial_outputs, save_trial_outputs

    splits = pd.DataFrame({"fold": [0], "role": ["fit"], "index": [1]})
    save_trial_outputs(tmp_path, "t1", np.arange(4), np.ones((4, 6)), splits)
    assert load_trial_outputs(tmp_path, "t1")["probs"].shape == (4, 6)
    damage(tmp_path / "t1.npz")
    with pytest.raises(MerTuneError, match=f"t1.npz: {message}"):
        load_trial_outputs(tmp_path, "t1")


def test_fold_models_pair_only_where_they_fit_on_the_same_samples(tmp_path):
    """The verdict resamples two trials' fold models together only where fold k of both
    fit on, selected on and scored the same samples; what each pseudo-labelled may differ."""
    from mer_tune.hpo.confirm import _fold_votes, load_trial_outputs, save_trial_outputs

    def saved(name, index, pseudo):
        splits = pd.DataFrame(
            {"fold": [0, 0, 1, 1, 0], "role": ["fit", "scored", "fit", "scored", "pseudo"],
             "index": [*index, pseudo]}
        )  # fmt: skip
        votes = np.full((2, 3, 6), 1 / 6, dtype=np.float32)
        save_trial_outputs(
            tmp_path, name, np.arange(3), votes[0], splits, votes, np.zeros(6), np.ones(3, bool)
        )
        return _fold_votes(load_trial_outputs(tmp_path, name), np.array([2, 0]))

    a, b = saved("a", [1, 2, 3, 4], 7), saved("b", [1, 2, 3, 4], 9)
    other = saved("c", [1, 2, 4, 3], 7)
    assert a[0].shape == (2, 2, 6) and a[2] == b[2] != other[2]
