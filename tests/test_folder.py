"""A search folder whose files were damaged or edited by hand: every command that reads
it says which file, in one line, and changes nothing."""

import pandas as pd
import pytest
import yaml
from test_cli import run_cli


def _folder(root):
    path = root / "runs" / "s"
    path.mkdir(parents=True)
    state = {"trials": 2, "tracking_uri": "sqlite:///x.db", "experiment": "e"}
    (path / "search.yaml").write_text(yaml.safe_dump(state | {"parent_run_id": "p"}))
    pd.DataFrame(
        {
            "trial": [0, 1],
            "trial_id": ["a", "b"],
            "status": ["FINISHED"] * 2,
            "weighted_f1": [0.5, 0.6],
        }
    ).to_csv(path / "results.csv", index=False)
    return path


DAMAGE = {
    "results_no_trial": ("results.csv", "a,b\n1,2\n", "no column 'trial'"),
    "results_no_id": ("results.csv", "trial,status\n0,FAILED\n", "no column 'trial_id'"),
    "results_not_number": (
        "results.csv",
        "trial,trial_id,status,weighted_f1\n0,a,FINISHED,notanumber\n",
        "column 'weighted_f1' holds a non-number",
    ),
    "results_bytes": ("results.csv", b"\xff\xfe\x00garbage", "not UTF-8 text"),
    "results_quote": (
        "results.csv",
        'trial,trial_id,status\n0,"a,FINISHED\n',
        "not a valid CSV table",
    ),
    "results_no_f1": (
        "results.csv",
        "trial,trial_id,status\n0,a,FINISHED\n",
        "no column 'weighted_f1'",
    ),
    "state_list": ("search.yaml", "- a\n- b\n", "not a mapping but list"),
    "state_empty": ("search.yaml", "", "not a mapping but NoneType"),
    "state_objectives": ("search.yaml", "objectives: nonsense\n", "objectives is not a list"),
    "state_garbage": ("search.yaml", "a: [b\n", "not valid YAML or JSON"),
    "state_type": ("search.yaml", "cache_dir: 42\n", "cache_dir is not a str"),
}


CASES = [
    (damage, command)
    for damage, (name, _, _) in DAMAGE.items()
    for command in ("report", "cache-info", "resume")
    # `cache info` reads search.yaml alone; only a resume keys its rows by trial_id.
    if (command != "cache-info" or name == "search.yaml")
    and (damage != "results_no_id" or command == "resume")
]


@pytest.mark.parametrize("damage, command", CASES)
def test_a_damaged_search_file_is_one_line_naming_it(tmp_path, capsys, damage, command):
    path = _folder(tmp_path)
    name, content, what = DAMAGE[damage]
    target = path / name
    target.write_bytes(content if isinstance(content, bytes) else content.encode())
    before = {p: p.read_bytes() for p in path.rglob("*")}
    args = {
        "report": ["report", "s"],
        "cache-info": ["cache", "info", "s"],
        "resume": ["search", "--resume", "s"],
    }[command]
    code, _, stderr = run_cli([*args, "--storage", str(tmp_path / "runs")], capsys)
    assert code == 1, stderr
    assert stderr.startswith(f"error: {target}: damaged or edited by hand (")
    assert what in stderr and len(stderr.strip().splitlines()) == 1
    assert {p: p.read_bytes() for p in path.rglob("*")} == before


def test_resume_of_a_search_yaml_without_its_run_ids_is_one_line(tmp_path, capsys):
    path = _folder(tmp_path)
    (path / "search.yaml").write_text("seed: 0\n")
    code, _, stderr = run_cli(["search", "--resume", "s", "--storage", str(path.parent)], capsys)
    assert code == 1 and stderr.strip() == (
        f"error: {path / 'search.yaml'}: damaged or edited by hand (no trials); mer-tune "
        "writes this file: restore it, or rerun the search"
    )


def test_report_on_a_damaged_study_database_is_one_line(tmp_path, capsys):
    path = _folder(tmp_path)
    (path / "optuna.db").write_text("garbage" * 100)
    code, _, stderr = run_cli(["report", "s", "--storage", str(path.parent)], capsys)
    assert code == 1 and stderr.strip() == (
        f"error: {path / 'optuna.db'}: damaged or edited by hand (not an SQLite database); "
        "mer-tune writes this file: restore it, or rerun the search"
    )


@pytest.mark.parametrize("command", [["report", "s"], ["confirm", "s"]])
def test_a_search_without_results_says_which_file_is_missing(tmp_path, capsys, command):
    path = _folder(tmp_path)
    (path / "results.csv").unlink()
    code, _, stderr = run_cli([*command, "--storage", str(path.parent)], capsys)
    assert code == 1 and stderr.strip() == (
        f"error: {path / 'results.csv'}: missing (the search stopped before its first trial "
        "ended, or the file was removed)"
    )


def test_the_front_of_a_multi_objective_search_without_pareto_csv_is_missing(tmp_path, capsys):
    path = _folder(tmp_path)
    state = yaml.safe_load((path / "search.yaml").read_text())
    state["objectives"] = ["weighted_f1", "min_class_f1"]
    (path / "search.yaml").write_text(yaml.safe_dump(state))
    args = ["report", "s", "--format", "csv", "--section", "pareto"]
    code, _, stderr = run_cli([*args, "--storage", str(path.parent)], capsys)
    assert code == 1
    assert stderr.strip() == f"error: {path / 'pareto.csv'}: missing (did the search finish?)"
