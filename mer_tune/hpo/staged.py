"""The staged strategy: search upstream parameters first, freeze the best, then search
the downstream ones, so that the stage cache serves almost every later trial.

A space's parameters are split by the pipeline stage they first affect:
  1. upstream   - model, noise, loss, optimiser, oversampling (every stage reruns)
  2. thresholds - pseudo-labelling and retraining rerun; pretrain and finetune are cached
  3. voting     - only the vote reruns; every trained head comes from the cache
Each step is an ordinary search (its own parent run in MLflow, tagged with the group).
All steps share the outer holdout; the last step confirms its best trials on it against
the first step's baseline.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from mer_tune.hpo.batched import batch_size
from mer_tune.hpo.cache import new_key
from mer_tune.hpo.folder import SearchFolder, storage_root
from mer_tune.hpo.spaces import load_space
from mer_tune.hpo.tuner import SearchResult, search
from mer_tune.method.config import get_path
from mer_tune.method.stages import VOTE_STEP, step_of

STEP_SHARES = {"upstream": 0.5, "thresholds": 0.25, "voting": 0.25}


def split_budget(trials: int, steps: list[str]) -> dict[str, int]:
    """Trials per step, proportional to STEP_SHARES, at least one each, summing to `trials`."""
    shares = {s: STEP_SHARES[s] for s in steps}
    total = sum(shares.values())
    budget = {s: max(1, int(trials * v / total)) for s, v in shares.items()}
    budget[steps[0]] += trials - sum(budget.values())
    return budget


def staged_search(
    space: str,
    trials: int,
    data: str | None = None,
    storage: str | Path = "mer-tune-runs",
    name: str | None = None,
    **kwargs: Any,
) -> SearchResult:
    """Run the steps in order; each step's best values are fixed for the next. Takes
    the arguments of `search` (tuner.py), in the same places."""
    sp = load_space(space)
    groups: dict[str, dict] = {}
    for key, _ in sp.describe():
        groups.setdefault(step_of(key), {})[key] = key
    steps = [s for s in STEP_SHARES if s in groups]
    if trials < len(steps):
        from mer_tune.errors import UsageError

        raise UsageError(
            f"--trials {trials}: the staged strategy needs at least {len(steps)} (one per step)"
        )
    budget = split_budget(trials, steps)
    fixed = dict(sp.fixed)
    name = name or f"{sp.name}-staged-{datetime.now():%Y%m%d-%H%M%S}"
    shared_cache = (
        kwargs.pop("cache_dir", None) or SearchFolder(storage_root(storage) / name).default_cache
    )
    result: SearchResult | None = None
    confirm_top = kwargs.pop("confirm_top", 3)
    batch = kwargs.pop("batch", None)  # the voting step's trials are batched (batched.py)
    if VOTE_STEP in groups:  # a --batch the voting step cannot take fails before any step
        vote_space = sp.subspace(list(groups[VOTE_STEP]), VOTE_STEP, fixed)
        batch_size(batch, vote_space, kwargs.get("cache", True), kwargs.get("scheduler", "none"))
    cache_key = new_key()  # one key for the one cache all steps share
    for i, step in enumerate(steps):
        last = i == len(steps) - 1
        # One cache for every step: later steps reuse the stages earlier ones computed.
        # Every step selects on inner folds of the same holdout split; only the last one
        # confirms, against the first step's trial 0 (the paper's values).
        result = search(
            sp.subspace(list(groups[step]), step, fixed),
            budget[step],
            data,
            storage=storage,
            name=f"{name}-{step}",
            cache_dir=shared_cache,
            confirm_top=confirm_top if last else 0,
            baseline_search=f"{name}-{steps[0]}" if last and i else None,
            cache_key=cache_key,
            batch=batch if step == VOTE_STEP else 1,
            **kwargs,
        )
        if result.best_config is None:
            return result
        fixed |= {k: get_path(result.best_config, k) for k in groups[step]}
    assert result is not None
    return result
