"""Optuna as Ray Tune's searcher: TPE suggests each trial, seeded, the base config's point
first. The one change to Ray's `OptunaSearch`: a trial the scheduler stopped early is told
to Optuna as PRUNED, not COMPLETE with a partial score (which would bias TPE toward short
runs). That override uses OptunaSearch's private `_ot_study`, `_ot_trials` and
`_completed_trials` (Ray 2.60); tests/test_optuna_adapter.py pins the behaviour. A warm
start adds earlier trials to `_ot_study` directly."""

from __future__ import annotations

from mer_tune.hpo import samplers
from mer_tune.hpo.objectives import METRIC, modes
from mer_tune.hpo.spaces import Space


class DefineByRun:
    """A space with conditional parameters as an Optuna define-by-run function: each
    parameter is suggested in the file's order, and only when its condition holds on
    the values suggested before it. A class, not a closure, so that Ray can pickle the
    searcher with the experiment state."""

    def __init__(self, space: Space):
        self.params, self.conditions = space.params, space.conditions

    def __call__(self, trial) -> None:
        import optuna

        values: dict = {}
        for key, dist in self.params.items():
            if not all(values.get(k) in v for k, v in self.conditions.get(key, {}).items()):
                continue
            if isinstance(dist, optuna.distributions.CategoricalDistribution):
                values[key] = trial.suggest_categorical(key, dist.choices)
            elif isinstance(dist, optuna.distributions.IntDistribution):
                values[key] = trial.suggest_int(
                    key, dist.low, dist.high, step=dist.step, log=dist.log
                )
            else:
                values[key] = trial.suggest_float(
                    key, dist.low, dist.high, step=dist.step, log=dist.log
                )


def optuna_searcher(
    space: Space,
    first_point: dict,
    seed: int,
    study: str,
    warm: list[tuple[dict, list[float]]] | None = None,
    goals: list[str] | None = None,
    sampler: str = "tpe",
):
    """Ray's OptunaSearch over `space`, `first_point` suggested first; `warm` holds
    (values, scores) of earlier trials, told to the study as finished before it asks.
    Several `goals` (objective names) make the study multi-objective: TPE in its
    multi-objective form, one direction per goal."""
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
    goals = goals or [METRIC]
    searcher = TruthfulOptunaSearch(
        # Conditional parameters need Optuna's define-by-run form; a plain space is the
        # ask-with-distributions form Ray uses for a dict.
        space=DefineByRun(space) if space.conditions else space.params,
        metric=goals if len(goals) > 1 else goals[0],
        mode=modes(goals) if len(goals) > 1 else modes(goals)[0],
        points_to_evaluate=[first_point],
        sampler=samplers.make(sampler, seed),
        study_name=study,
        # In memory: Ray checkpoints the searcher with the experiment state, so a resumed
        # search continues the very study Ray knows. `_finish` exports it to optuna.db.
        storage=None,
    )
    for values, scores in warm or []:
        # Into the study itself: Ray's add_evaluated_point refuses define-by-run spaces.
        searcher._ot_study.add_trial(
            optuna.trial.create_trial(
                params=values,
                distributions={k: space.params[k] for k in values},
                values=scores,
                user_attrs={"mer_tune.warm_start": True},
            )
        )
    return searcher
