"""mer-tune: hyperparameter search for semi-supervised multimodal emotion recognition.

data/    the MERTools layout, packing, synthetic data, feature extraction from clips
method/  config, model, training loops, the pipeline of one trial (no Ray, no MLflow)
hpo/     spaces, Ray Tune + Optuna, MLflow records, stage cache, holdout and confirm
cli/     the `mer-tune` commands, a module per group; runner.py: `mer-tune run` and `predict`
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def search(*args: Any, **kwargs: Any):
    """Run a search; see `mer_tune.hpo.tuner.search` (imported lazily: Ray is heavy)."""
    from mer_tune.hpo.tuner import search as _search

    return _search(*args, **kwargs)


__all__ = ["search", "__version__"]
