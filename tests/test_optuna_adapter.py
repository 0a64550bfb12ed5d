"""The Optuna adapter without a Ray cluster, as Ray tests its searchers: suggestions come
from Optuna's seeded TPE with the base config's point first, and a trial the scheduler
stopped early is told to Optuna as PRUNED, not as a COMPLETE short run."""

import optuna
import pytest

from mer_tune.hpo.optuna_adapter import optuna_searcher
from mer_tune.hpo.spaces import space_from_dict

SPACE = {
    "params": {
        "self_training.thresholds.sad": {"type": "float", "low": 0.5, "high": 1.0},
        "optim.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
    }
}
FIRST = {"self_training.thresholds.sad": 0.99, "optim.lr": 1e-3}


def _searcher(seed=0):
    return optuna_searcher(space_from_dict(SPACE, None, "s", "test"), FIRST, seed, "study")


def _states(searcher):
    return [t.state for t in searcher._ot_study.trials]


def test_the_first_suggestion_is_the_base_point_and_the_seed_repeats_the_rest():
    a, b, c = _searcher(3), _searcher(3), _searcher(4)
    assert a.suggest("t0") == pytest.approx(FIRST)
    b.suggest("t0")
    c.suggest("t0")
    for i in range(1, 4):
        got = a.suggest(f"t{i}")
        assert got == b.suggest(f"t{i}")
        assert got != c.suggest(f"t{i}")
        assert 0.5 <= got["self_training.thresholds.sad"] <= 1.0


def test_a_trial_stopped_early_is_pruned_and_a_finished_one_complete():
    searcher = _searcher()
    for i in range(3):
        searcher.suggest(f"t{i}")
    searcher.on_trial_complete("t0", {"weighted_f1": 0.7, "final": True})
    searcher.on_trial_complete("t1", {"weighted_f1": 0.4, "final": False})  # ASHA stopped it
    searcher.on_trial_complete("t2", error=True)
    assert _states(searcher) == [
        optuna.trial.TrialState.COMPLETE,
        optuna.trial.TrialState.PRUNED,
        optuna.trial.TrialState.FAIL,
    ]
    assert searcher._ot_study.trials[0].value == 0.7
    assert searcher._ot_study.trials[1].value is None  # the partial score is not told
