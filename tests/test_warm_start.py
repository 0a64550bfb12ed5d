"""Warm starts: which earlier trials a new search may import, and the one-line refusals,
on hand-written search folders (no Ray)."""

import pandas as pd
import pytest
import yaml

from mer_tune.errors import UsageError
from mer_tune.hpo.optuna_adapter import optuna_searcher
from mer_tune.hpo.spaces import space_from_dict
from mer_tune.hpo.warm_start import import_trials
from mer_tune.method.config import build_config

SAD = "self_training.thresholds.sad"
LR = "optim.lr"
SPACE = {
    "params": {
        SAD: {"type": "float", "low": 0.5, "high": 1.0},
        LR: {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
    }
}


def _earlier(root, name="a", fingerprint="fp1", holdout=("s1", "s2"), base=None, rows=None):
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "search.yaml").write_text(yaml.safe_dump({"dataset": {"fingerprint": fingerprint}}))
    (folder / "base_config.yaml").write_text((base or build_config()).to_yaml())
    (folder / "space.yaml").write_text(yaml.safe_dump(SPACE))
    pd.DataFrame({"name": list(holdout), "discrete": "sad"}).to_csv(
        folder / "holdout.csv", index=False
    )
    rows = rows or [
        {"trial": 0, SAD: 0.99, LR: 1e-3, "weighted_f1": 0.70, "status": "FINISHED"},
        {"trial": 1, SAD: 0.60, LR: 5e-3, "weighted_f1": 0.75, "status": "FINISHED"},
        {"trial": 2, SAD: 0.80, LR: 2e-4, "weighted_f1": 0.72, "status": "FINISHED"},
        {"trial": 3, SAD: 0.70, LR: 1e-3, "weighted_f1": None, "status": "FAILED"},
    ]
    pd.DataFrame(rows).to_csv(folder / "results.csv", index=False)
    return folder


def _space(params):
    return space_from_dict({"params": params}, None, "new", "new.yaml")


def test_the_finished_trials_of_the_same_space_are_all_imported(tmp_path):
    _earlier(tmp_path)
    got = import_trials(
        tmp_path, ["a"], "fp1", ["s1", "s2"], build_config(), _space(SPACE["params"])
    )
    assert [score for _, score in got.points] == [[0.70], [0.75], [0.72]]  # not the failed one
    assert got.points[1][0] == {SAD: 0.60, LR: 5e-3}
    assert got.line().startswith("warm start: 3 earlier trials imported (a 3 of 3)")


def test_a_parameter_the_new_space_leaves_out_keeps_only_the_trials_at_its_value(tmp_path):
    _earlier(tmp_path)
    only_sad = _space({SAD: SPACE["params"][SAD]})
    got = import_trials(tmp_path, ["a"], "fp1", ["s1", "s2"], build_config(), only_sad)
    # Trials 0 and 1 of the earlier search ran other learning rates than the base's 1e-3...
    assert got.points == [({SAD: 0.99}, [0.70])]
    assert got.reasons == {"optim.lr differs": 2}
    # ...unless the new search pins the same value.
    pinned = build_config({"optim": {"lr": 5e-3}})
    got = import_trials(tmp_path, ["a"], "fp1", ["s1", "s2"], pinned, only_sad)
    assert got.points == [({SAD: 0.60}, [0.75])]


def test_values_outside_the_new_bounds_and_other_settings_are_left_out(tmp_path):
    _earlier(tmp_path)
    narrow = _space({SAD: {"type": "float", "low": 0.75, "high": 1.0}, LR: SPACE["params"][LR]})
    got = import_trials(tmp_path, ["a"], "fp1", ["s1", "s2"], build_config(), narrow)
    assert [p[SAD] for p, _ in got.points] == [0.99, 0.80]
    assert got.reasons == {f"{SAD} outside this space": 1}
    longer = build_config({"finetune": {"epochs": 20}})
    got = import_trials(tmp_path, ["a"], "fp1", ["s1", "s2"], longer, _space(SPACE["params"]))
    assert got.points == [] and got.reasons == {"finetune.epochs differs": 3}
    # The seeds change the draw, not the setting: those trials still count.
    reseeded = build_config({"seed": 5, "eval": {"seed": 5}})
    assert (
        len(
            import_trials(
                tmp_path, ["a"], "fp1", ["s1", "s2"], reseeded, _space(SPACE["params"])
            ).points
        )
        == 3
    )


@pytest.mark.parametrize(
    "names, fingerprint, holdout, message",
    [
        (["gone"], "fp1", ["s1", "s2"], "--from-search gone: no finished search of that name"),
        (["a"], "fp2", ["s1", "s2"], "--from-search a: the data fingerprint differs"),
        (["a"], "fp1", ["s1", "s3"], "--from-search a: its outer holdout differs"),
        (["../a"], "fp1", ["s1", "s2"], "--from-search"),
    ],
    ids=["missing", "other-data", "other-holdout", "a-path"],
)
def test_a_search_that_cannot_be_used_is_one_line(tmp_path, names, fingerprint, holdout, message):
    _earlier(tmp_path)
    with pytest.raises(UsageError, match=message) as err:
        import_trials(
            tmp_path, names, fingerprint, holdout, build_config(), _space(SPACE["params"])
        )
    assert "\n" not in str(err.value)


def test_imported_trials_are_finished_trials_of_the_study_before_it_asks():
    sp = _space(SPACE["params"])
    warm = [({SAD: 0.6, LR: 5e-3}, [0.75]), ({SAD: 0.8, LR: 2e-4}, [0.72])]
    searcher = optuna_searcher(sp, {SAD: 0.99, LR: 1e-3}, 0, "s", warm)
    trials = searcher._ot_study.trials
    assert [t.value for t in trials if t.state.name == "COMPLETE"] == [0.75, 0.72]
    assert searcher.suggest("t0") == pytest.approx({SAD: 0.99, LR: 1e-3})  # baseline first
