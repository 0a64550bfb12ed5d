"""A search's record, search.yaml, as a typed object: what the search settled on when it
started (its settings after defaults and the cluster filled them in), the MLflow ids, and
the marks it gains later (the shared stages trained, the time it finished).

Every reader of search.yaml reads a SearchRecord, so a default lives in one place: a
search written by an earlier release, without a key, reads that key's default here.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mer_tune.errors import MerTuneError
from mer_tune.hpo.objectives import METRIC
from mer_tune.hpo.tracking import redact

# The settings a search settled on when it started, as its parent run's parameters.
SETTINGS = (
    "space", "trials", "seed", "folds", "repeats", "select_on", "holdout", "holdout_seed",
    "holdout_size", "confirm_top", "confirm_seeds", "scheduler", "concurrency",
    "cpus_per_trial", "gpus_per_trial", "gpu_memory_estimate_gib", "data", "cache",
    "max_failures", "trial_timeout", "batch", "share_features", "own_copy_gpus", "sampler",
)  # fmt: skip
# Keys written only once they hold something (a search from before them has none).
LATER_MARKS = ("shared_stages", "finished")


@dataclass(frozen=True)
class SearchRecord:
    space: str | None = None
    # What --resume needs: None only in a search.yaml damaged or edited by hand.
    trials: int | None = None
    tracking_uri: str | None = None
    experiment: str | None = None
    parent_run_id: str | None = None
    seed: int = 0
    folds: int = 1
    repeats: int = 1
    select_on: str | None = None
    holdout: float = 0.0
    holdout_seed: int | None = None  # None: the seed
    holdout_size: int = 0
    confirm_top: int = 3
    confirm_seeds: int = 0
    scheduler: str = "none"
    concurrency: int = 1
    cpus_per_trial: float = 1
    gpus_per_trial: float = 0
    gpu_memory_estimate_gib: float | None = None
    data: str | None = None
    cache: bool = True
    max_failures: int = 0
    trial_timeout: float | None = None
    batch: int = 1
    share_features: bool = False
    own_copy_gpus: float | None = None  # None: gpus_per_trial
    sampler: str = "tpe"  # samplers.py (a search from before --sampler used TPE)
    cache_dir: str | None = None
    dataset: dict | None = None  # data.resolve.describe; None in searches before it
    baseline_search: str | None = None
    from_searches: tuple[str, ...] = ()
    warm_start_trials: int = 0
    objectives: tuple[str, ...] = (METRIC,)
    pick: str | None = None
    shared_stages: dict | None = None
    finished: str | None = None
    # Keys this release does not know (a later release's), kept when the file is rewritten.
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> SearchRecord:
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        values = {k: v for k, v in state.items() if k in known}
        if not values.get("objectives"):  # absent, or empty in an older search
            values.pop("objectives", None)
        for key in ("objectives", "from_searches"):
            if values.get(key) is not None:
                values[key] = tuple(values[key])
            else:
                values.pop(key, None)
        extra = {k: v for k, v in state.items() if k not in known}
        return cls(**values, extra=extra)

    def to_dict(self) -> dict[str, Any]:
        """search.yaml's mapping: plain YAML types, the later marks only once set."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "extra" or (f.name in LATER_MARKS and value is None):
                continue
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out | self.extra

    def settings(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in SETTINGS}

    def replace(self, **changes: Any) -> SearchRecord:
        return dataclasses.replace(self, **changes)

    @property
    def the_holdout_seed(self) -> int:
        return self.seed if self.holdout_seed is None else self.holdout_seed

    @property
    def retrain_gpus(self) -> float:
        """GPUs of a job that uploads its own copy of the features (the confirm step's
        retraining): with --share-features a trial's share may hold less."""
        return self.gpus_per_trial if self.own_copy_gpus is None else self.own_copy_gpus

    def uri(self, state_file: Path) -> str:
        """The tracking URI. Its password, if it had one, was not stored: an http(s)
        server takes it from MLFLOW_TRACKING_USERNAME / _PASSWORD; a database URI is taken
        whole from MLFLOW_TRACKING_URI when that is the same URI."""
        uri = self.tracking_uri or ""
        if ":***@" not in uri:
            return uri
        given = os.environ.get("MLFLOW_TRACKING_URI", "")
        if given and redact(given) == uri:
            return given
        raise MerTuneError(
            f"{state_file}: the tracking URI {uri} needs its password, which is never "
            "stored; set MLFLOW_TRACKING_URI to the full URI"
        )
