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


def _tune_trial(trial_id, status, config, result=None):
    """What tune_state reads of a Tune trial."""
    from types import SimpleNamespace

    return SimpleNamespace(trial_id=trial_id, status=status, config=config, last_result=result)


def test_a_searcher_saved_before_tune_ran_a_trial_learns_it_and_moves_on(tmp_path):
    """tune_state: a study trial for each Tune trial it never saw, told as Tune ended it
    (an error as FAIL, never its partial score), and no repeat of the adopted values."""
    from mer_tune.hpo.tune_state import _study_agrees

    live = _searcher()
    for i in range(2):
        live.suggest(f"t{i}")
    live.save(str(tmp_path / "old.pkl"))  # saved before t2 and t3 were suggested
    t2, t3 = live.suggest("t2"), live.suggest("t3")
    old = _searcher()
    old.restore(str(tmp_path / "old.pkl"))
    trials = [
        _tune_trial("t0", "TERMINATED", FIRST, {"weighted_f1": 0.7, "final": True}),
        _tune_trial("t1", "RUNNING", {}),
        _tune_trial("t2", "ERROR", t2, {"weighted_f1": 0.1, "final": False}),
        _tune_trial("t3", "RUNNING", t3),
    ]
    trials[1].config = dict(old._ot_trials["t1"].params)
    assert _study_agrees(old, trials) == [
        "2 trial(s) added to the study",
        "2 result(s) told to the study",
    ]
    assert _states(old) == [
        optuna.trial.TrialState.COMPLETE,
        optuna.trial.TrialState.RUNNING,
        optuna.trial.TrialState.FAIL,
        optuna.trial.TrialState.RUNNING,
    ]
    assert old._ot_trials["t3"].params == pytest.approx(t3)
    assert _study_agrees(old, trials) == []  # agreeing twice changes nothing
    assert old.suggest("t4") not in (t2, t3)


def test_a_suggestion_tune_lost_is_failed_with_a_note_and_asked_again():
    from mer_tune.hpo.tune_state import LOST, _study_agrees

    searcher = _searcher()
    searcher.suggest("t0")
    lost = searcher.suggest("t1")
    trials = [_tune_trial("t0", "TERMINATED", FIRST, {"weighted_f1": 0.5, "final": True})]
    assert _study_agrees(searcher, trials) == [
        "1 result(s) told to the study",
        "1 lost suggestion(s) to ask again",
    ]
    assert LOST in searcher._ot_study.trials[1].user_attrs
    assert searcher.suggest("t2") == pytest.approx(lost)
