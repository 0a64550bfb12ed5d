"""Optuna as Ray Tune's searcher: TPE suggests each trial, seeded, the base config's point
first. The one change to Ray's `OptunaSearch`: a trial the scheduler stopped early is told
to Optuna as PRUNED, not COMPLETE with a partial score (which would bias TPE toward short
runs). That override uses OptunaSearch's private `_ot_study`, `_ot_trials` and
`_completed_trials` (Ray 2.60); tests/test_optuna_adapter.py pins the behaviour."""

from __future__ import annotations

from mer_tune.hpo.spaces import Space
from mer_tune.hpo.trial import METRIC


def optuna_searcher(space: Space, first_point: dict, seed: int, study: str):
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    class TruthfulOptunaSearch(OptunaSearch):
        """Trials a scheduler stopped early are told to Optuna as PRUNED, not COMPLETE
        with a partial score (which would bias TPE toward short runs)."""

        def on_trial_complete(
            self, trial_id: str, result: dict | None = None, error: bool = False
        ) -> None:
            if (
                result
                and not error
                and not result.get("final")
                and trial_id not in self._completed_trials
            ):
                self._ot_study.tell(self._ot_trials[trial_id], state=optuna.trial.TrialState.PRUNED)
                self._completed_trials.add(trial_id)
                return
            super().on_trial_complete(trial_id, result, error)

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return TruthfulOptunaSearch(
        space=space.params,
        metric=METRIC,
        mode="max",
        points_to_evaluate=[first_point],
        sampler=optuna.samplers.TPESampler(seed=seed),
        study_name=study,
        # In memory: Ray checkpoints the searcher with the experiment state, so a resumed
        # search continues the very study Ray knows. `_finish` exports it to optuna.db.
        storage=None,
    )
