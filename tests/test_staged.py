import pandas as pd
import yaml

from mer_tune.hpo.staged import split_budget, staged_search, step_of


def test_parameters_split_by_the_stage_they_first_affect():
    assert step_of("optim.lr") == "upstream" and step_of("oversample.target") == "upstream"
    assert step_of("self_training.thresholds.sad") == "thresholds"
    assert step_of("voting.weights.audio") == "voting"


def test_budget_split_sums_to_the_trials():
    assert split_budget(16, ["upstream", "thresholds", "voting"]) == {
        "upstream": 8,
        "thresholds": 4,
        "voting": 4,
    }
    assert split_budget(3, ["upstream", "thresholds", "voting"]) == {
        "upstream": 1,
        "thresholds": 1,
        "voting": 1,
    }
    assert sum(split_budget(7, ["upstream", "voting"]).values()) == 7


def test_staged_search_freezes_each_steps_best_for_the_next(search_env, tiny_dir):
    (search_env / "mixed.yaml").write_text(
        yaml.safe_dump(
            {
                "params": {
                    "optim.lr": {"type": "float", "low": 0.001, "high": 0.005, "log": True},
                    "self_training.thresholds.sad": {"type": "float", "low": 0.2, "high": 0.6},
                    "voting.weights.text": {"type": "float", "low": 0.0, "high": 1.0},
                }
            }
        )
    )
    res = staged_search(
        str(search_env / "mixed.yaml"),
        4,
        data=str(tiny_dir),
        config=str(search_env / "fast.yaml"),
        concurrency=1,
        tracking_uri=f"sqlite:///{search_env / 'mlflow.db'}",
        storage=str(search_env / "runs"),
        name="st",
    )
    runs = search_env / "runs"
    upstream = pd.read_csv(runs / "st-upstream" / "results.csv")
    voting = pd.read_csv(runs / "st-voting" / "results.csv")
    assert len(upstream) == 2 and len(voting) == 1
    best_lr = upstream.loc[upstream["weighted_f1"].idxmax(), "optim.lr"]
    from mer_tune.method.config import load_config

    # frozen from the first step for the later ones
    assert load_config(runs / "st-voting" / "base_config.yaml").optim.lr == best_lr
    # Only the last step confirms, against the first step's trial 0 (the baseline).
    assert not (runs / "st-upstream" / "confirm.csv").exists()
    base = res.confirm[res.confirm["role"] == "baseline"]
    assert base["search"].tolist() == ["st-upstream"] and base["trial"].tolist() == [0]
    assert res.verdict is not None and res.verdict.text
    # The voting step trains nothing: every stage came from the shared cache.
    from mlflow.tracking import MlflowClient

    client = MlflowClient(res.tracking_uri)
    voting_parent = res.parent_run_id
    children = client.search_runs(
        [res.experiment_id], f"tags.mlflow.parentRunId = '{voting_parent}'"
    )
    assert children
    for child in children:
        assert child.data.tags["mer_tune.cached_stages"] == "finetune,pretrain,pseudo"


def test_the_cli_runs_a_staged_search(search_env, tiny_dir, capsys):
    """`search --strategy staged` as typed (the CLI passes the data in the place `search`
    takes it; the staged search once took it for the storage folder)."""
    from test_cli import run_cli

    args = ["search", "--strategy", "staged", "--space", "space.yaml", "--trials", "1"]
    args += ["--config", "fast.yaml", "--data", str(tiny_dir), "--name", "cli"]
    code, stdout, stderr = run_cli(args, capsys)
    assert code == 0, stderr
    results = pd.read_csv(search_env / "mer-tune-runs" / "cli-thresholds" / "results.csv")
    assert results["status"].tolist() == ["FINISHED"] and "verdict:" in stdout
