"""The fold pruner without a cluster: when a trial's folds are clearly behind the best's."""

import pytest
from ray.tune.schedulers import TrialScheduler

from mer_tune.errors import UsageError
from mer_tune.hpo.fold_pruner import FoldPruner, behind, check_folds

BEST = [0.80, 0.82, 0.78, 0.81, 0.79]


def test_a_trial_is_behind_only_when_a_paired_test_says_so():
    assert not behind([0.70, 0.71, 0.69], BEST)  # 3 folds: the exact p is at least 1/8
    assert behind([0.70, 0.71, 0.69, 0.72], BEST)  # 4 folds all behind: p = 1/16
    assert not behind([0.70, 0.90, 0.69, 0.72], BEST)  # one fold ahead: not clear
    assert not behind([0.81, 0.83, 0.79, 0.82], BEST)  # ahead on the mean: never
    assert not behind(BEST[:4], BEST)  # a tie


class _Trial:
    def __init__(self, trial_id):
        self.trial_id = trial_id


def _fold(k, score):
    return {"fold_f1": score, "fold": k, "folds": 5, "final": False}


def test_the_scheduler_stops_a_trial_behind_the_best_finished_one():
    pruner = FoldPruner()
    best, late, good = _Trial("best"), _Trial("late"), _Trial("good")
    for k, score in enumerate(BEST):  # no finished trial yet: nothing to compare with
        assert pruner.on_trial_result(None, best, _fold(k, score)) == TrialScheduler.CONTINUE
    pruner.on_trial_complete(None, best, {"final": True})
    assert pruner.best == BEST
    decisions = [pruner.on_trial_result(None, late, _fold(k, s - 0.1)) for k, s in enumerate(BEST)]
    assert decisions[:3] == [TrialScheduler.CONTINUE] * 3 and decisions[3] == TrialScheduler.STOP
    assert pruner.on_trial_result(None, _Trial("epoch"), {"weighted_f1": 0.1}) == "CONTINUE"
    for k, score in enumerate(BEST):
        assert pruner.on_trial_result(None, good, _fold(k, score + 0.01)) == "CONTINUE"
    pruner.on_trial_complete(None, good, {"final": True})
    assert pruner.best == pytest.approx([s + 0.01 for s in BEST])  # the new best


def test_the_fold_pruner_needs_several_folds():
    check_folds(5, 1)
    check_folds(1, 3)  # repeated 80/20 splits are folds too
    with pytest.raises(UsageError, match="--scheduler folds .* needs several folds"):
        check_folds(1, 1)
