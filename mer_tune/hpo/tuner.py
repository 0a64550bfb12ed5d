"""`mer-tune search` from Python: Ray Tune runs the trials, Optuna suggests them, MLflow
records them.

`search` builds SearchSettings (settings.py) from its keyword arguments and runs one
SearchSession (session.py); `resume` continues an interrupted one. The driver owns every
MLflow write (tracking.py); trials only run the pipeline and report. The dataset reaches
trials once, through the object store.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from mer_tune.hpo.result import SearchResult
from mer_tune.hpo.session import SearchSession
from mer_tune.hpo.settings import SearchSettings


def search(
    space: Any = "thresholds",
    trials: int = 8,
    data: str | None = None,
    *,
    on_event: Callable[..., None] | None = None,
    **options: Any,
) -> SearchResult:
    """Run a hyperparameter search and return its results table and best config.

    `options` are the fields of SearchSettings (settings.py), named as the CLI's options.
    Before any trial, a stratified `holdout` share of the labelled set is set aside
    (seed `holdout_seed`, default `seed`); trials select on the rest. At the end the
    `confirm_top` best trials and the baseline (trial 0) are scored on the holdout
    (`res.confirm`) and `res.verdict` says whether the winner beats the baseline.
    `from_searches` names earlier searches (in `storage`) whose finished trials seed
    Optuna's study, where their settings and data agree with this one's (warm_start.py).
    Several `objectives` (objectives.py) make it a multi-objective search: the result is
    a Pareto front (STORAGE/NAME/pareto/), and `pick` chooses best_config.yaml from it.
    When every searched parameter lies downstream of the stage cache (voting weights,
    decision offsets), trials run `batch` at a time in one Ray actor (batched.py;
    None: 100 where the space allows it, 1: one Ray Tune trial each).
    `share_features`: GPU trials on one card read one copy of the features
    (card_features.py) rather than each uploading its own.

    Example (in a notebook)::

        import mer_tune
        res = mer_tune.search(space="thresholds", trials=16, data="synthetic:small")
        res.results.sort_values("weighted_f1", ascending=False).head()
        res.confirm, res.verdict.text, res.best_config.to_yaml()
    """
    settings = SearchSettings(space=space, trials=trials, data=data, **options)
    return SearchSession.start(settings, on_event).run()


def resume(
    name: str,
    storage: str | Path = "mer-tune-runs",
    address: str | None = None,
    on_event: Callable[..., None] | None = None,
) -> SearchResult:
    """Continue the interrupted search NAME where it stopped (SearchSession.resume)."""
    return SearchSession.resume(name, storage, address, on_event).run()
