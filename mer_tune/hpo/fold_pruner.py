"""`--scheduler folds`: stop a trial whose folds are clearly behind the best trial's.

A trial reports each fold's weighted F1 as the fold finishes (pipeline.run). After
`min_folds` folds, its scores are compared with the best finished trial's scores on the
same folds (the same split, so the comparison is paired) by a one-sided Wilcoxon
signed-rank test, as Optuna's WilcoxonPruner does; below `p_threshold` the trial stops
and is recorded as PRUNED with the folds it ran. A trial whose mean so far is at least
the best's is never stopped. With 5 folds and the default threshold 0.1, the earliest
stop is after 4 folds that are all behind (an exact p of 1/16).
"""

from __future__ import annotations

import numpy as np
from ray.tune.schedulers import FIFOScheduler, TrialScheduler
from scipy.stats import wilcoxon

from mer_tune.errors import UsageError

P_THRESHOLD = 0.1
MIN_FOLDS = 2


def check_folds(folds: int, repeats: int) -> None:
    if folds * repeats < 2:
        raise UsageError(
            "--scheduler folds compares a trial fold by fold with the best one: it needs "
            f"several folds (--folds {folds}; use --folds 5 or --repeats)"
        )


def behind(current: list[float], best: list[float], p_threshold: float = P_THRESHOLD) -> bool:
    """Whether fold scores `current` are clearly below `best` on the same folds."""
    diffs = np.asarray(current) - np.asarray(best[: len(current)])
    if len(diffs) < MIN_FOLDS or diffs.mean() >= 0 or not np.any(diffs):
        return False
    return bool(wilcoxon(diffs, alternative="less", method="exact").pvalue < p_threshold)


class FoldPruner(FIFOScheduler):
    """A Tune scheduler over per-fold results (those carrying `fold_f1`); it keeps the
    fold scores of the best finished trial (by their mean)."""

    def __init__(self, p_threshold: float = P_THRESHOLD):
        super().__init__()
        self.p_threshold = p_threshold
        self.best: list[float] | None = None
        self.running: dict[str, list[float]] = {}

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        if "fold_f1" not in result:
            return TrialScheduler.CONTINUE
        folds = self.running.setdefault(trial.trial_id, [])
        folds.append(float(result["fold_f1"]))
        last = len(folds) >= int(result.get("folds", 0))
        if self.best is None or last or not behind(folds, self.best, self.p_threshold):
            return TrialScheduler.CONTINUE
        return TrialScheduler.STOP

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        folds = self.running.pop(trial.trial_id, [])
        if not result or not result.get("final") or not folds:
            return
        if self.best is None or np.mean(folds) > np.mean(self.best):
            self.best = folds

    def on_trial_error(self, tune_controller, trial) -> None:
        self.running.pop(trial.trial_id, None)

    def debug_string(self) -> str:
        return "Stopping trials whose folds are clearly behind the best trial's."
