"""What a search is asked to do, as one typed, frozen object, checked when it is built.

The CLI builds SearchSettings from its options and the Python API from its keyword
arguments; everything after works from the one object. Defaults the cluster decides
(concurrency, GPUs per trial) stay None here and are settled when the search starts
(starting.py); what it settled on is the search's record (record.py, search.yaml).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mer_tune.data.layout import DataOptions
from mer_tune.errors import UsageError
from mer_tune.hpo.holdout import check_fraction
from mer_tune.hpo.objectives import METRIC, check_scheduler, parse_pick
from mer_tune.hpo.objectives import parse as parse_objectives
from mer_tune.hpo.samplers import SAMPLERS
from mer_tune.hpo.spaces import Space
from mer_tune.method.config import Config

SCHEDULERS = ("none", "asha", "folds")


@dataclass(frozen=True, kw_only=True)
class SearchSettings:
    space: str | Space = "thresholds"
    trials: int = 8
    data: str | None = None  # a MERTools folder, or synthetic:tiny|small|full|mer2025
    config: str | Path | Config | None = None  # base config: a file, a Config, or built-in
    overrides: dict[str, Any] = field(default_factory=dict)
    folds: int | None = 1
    repeats: int | None = None
    concurrency: int | None = None  # None: CPUs / cpus_per_trial
    cpus_per_trial: float = 1
    gpus_per_trial: float | None = None  # None: 1 where the cluster has GPUs, else 0
    scheduler: str = "none"
    seed: int = 0
    address: str | None = None
    storage: str | Path = "mer-tune-runs"
    tracking_uri: str | None = None
    experiment: str = "mer-tune"
    name: str | None = None
    cache: bool = True
    cache_dir: str | Path | None = None
    max_failures: int = 0
    trial_timeout: float | None = None
    data_options: DataOptions | None = None
    holdout: float = 0.2
    holdout_seed: int | None = None
    confirm_top: int = 3
    confirm_seeds: int = 0
    baseline_search: str | None = None  # whose trial 0 the verdict compares with
    cache_key: bytes | None = None  # a staged search's steps sign their one cache alike
    from_searches: tuple[str, ...] = ()
    objectives: tuple[str, ...] = (METRIC,)
    pick: str | None = None
    batch: int | None = None  # None: batched where the space allows it (batched.py)
    share_features: bool = False
    sampler: str = "tpe"  # samplers.py: tpe, gp, random, cmaes or auto

    def __post_init__(self) -> None:
        # Normalised forms of what callers may give loosely (a comma list, a list).
        goals = parse_objectives(self.objectives)
        object.__setattr__(self, "objectives", tuple(goals))
        object.__setattr__(self, "from_searches", tuple(self.from_searches or ()))
        object.__setattr__(self, "overrides", dict(self.overrides or {}))
        self._check(goals)

    def _check(self, goals: list[str]) -> None:
        if self.trials < 1:
            raise UsageError(f"--trials {self.trials}: must be at least 1")
        if self.sampler not in SAMPLERS:
            raise UsageError(f"--sampler {self.sampler}: expected one of {', '.join(SAMPLERS)}")
        if self.scheduler not in SCHEDULERS:
            raise UsageError(f"--scheduler {self.scheduler}: expected none, asha or folds")
        if self.confirm_top < 0 or self.confirm_seeds < 0:
            raise UsageError("--confirm-top and --confirm-seeds must be 0 or more")
        for option, value in (
            ("--cpus-per-trial", self.cpus_per_trial),
            ("--gpus-per-trial", self.gpus_per_trial),
            ("--trial-timeout", self.trial_timeout),
            ("--holdout", self.holdout),
        ):
            if value is not None and not math.isfinite(value):
                raise UsageError(f"{option} {value}: must be a finite number")
        if self.trial_timeout is not None and self.trial_timeout <= 0:
            raise UsageError(f"--trial-timeout {self.trial_timeout:g}: must be above 0")
        check_fraction(self.holdout)  # before anything is created or loaded
        check_scheduler(goals, self.scheduler)
        if self.pick and parse_pick(self.pick, goals) and len(goals) == 1:
            raise UsageError("--pick chooses a point of a Pareto front: give several --objective")
        if self.scheduler == "folds" and goals[0] != METRIC:
            raise UsageError("--scheduler folds compares weighted F1: put weighted_f1 first")

    def replace(self, **changes: Any) -> SearchSettings:
        return dataclasses.replace(self, **changes)

    @property
    def the_holdout_seed(self) -> int:
        return self.seed if self.holdout_seed is None else self.holdout_seed
