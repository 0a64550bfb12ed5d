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

from collections.abc import Callable
from datetime import datetime
from typing import Any

from mer_tune.errors import UsageError
from mer_tune.hpo.batched import batch_size
from mer_tune.hpo.cache import new_key
from mer_tune.hpo.folder import SearchFolder, storage_root
from mer_tune.hpo.result import SearchResult
from mer_tune.hpo.session import SearchSession
from mer_tune.hpo.settings import SearchSettings
from mer_tune.hpo.spaces import load_space
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
    space: str = "thresholds",
    trials: int = 8,
    data: str | None = None,
    *,
    on_event: Callable[..., None] | None = None,
    **options: Any,
) -> SearchResult:
    """The staged strategy from Python; takes the arguments of `search` (tuner.py)."""
    settings = SearchSettings(space=space, trials=trials, data=data, **options)
    return run_staged(settings, on_event)


def run_staged(
    settings: SearchSettings, on_event: Callable[..., None] | None = None
) -> SearchResult:
    """Run the steps in order, one search session each; each step's best values are
    fixed for the next."""
    sp = load_space(settings.space)
    groups: dict[str, dict] = {}
    for key, _ in sp.describe():
        groups.setdefault(step_of(key), {})[key] = key
    steps = [s for s in STEP_SHARES if s in groups]
    if settings.trials < len(steps):
        raise UsageError(
            f"--trials {settings.trials}: the staged strategy needs at least {len(steps)} "
            "(one per step)"
        )
    budget = split_budget(settings.trials, steps)
    fixed = dict(sp.fixed)
    name = settings.name or f"{sp.name}-staged-{datetime.now():%Y%m%d-%H%M%S}"
    # One cache for every step, signed with one key: later steps reuse the stages
    # earlier ones computed.
    shared_cache = (
        settings.cache_dir or SearchFolder(storage_root(settings.storage) / name).default_cache
    )
    if VOTE_STEP in groups:  # a --batch the voting step cannot take fails before any step
        vote_space = sp.subspace(list(groups[VOTE_STEP]), VOTE_STEP, fixed)
        batch_size(settings.batch, vote_space, settings.cache, settings.scheduler)
    common = settings.replace(cache_dir=shared_cache, cache_key=new_key())
    result: SearchResult | None = None
    for i, step in enumerate(steps):
        last = i == len(steps) - 1
        # Every step selects on inner folds of the same holdout split; only the last one
        # confirms, against the first step's trial 0 (the paper's values).
        step_settings = common.replace(
            space=sp.subspace(list(groups[step]), step, fixed),
            trials=budget[step],
            name=f"{name}-{step}",
            confirm_top=settings.confirm_top if last else 0,
            baseline_search=f"{name}-{steps[0]}" if last and i else None,
            batch=settings.batch if step == VOTE_STEP else 1,  # the voting step is batched
        )
        result = SearchSession.start(step_settings, on_event).run()
        if result.best_config is None:
            return result
        fixed |= {k: get_path(result.best_config, k) for k in groups[step]}
    assert result is not None
    return result
