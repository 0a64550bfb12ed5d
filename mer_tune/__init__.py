"""mer-tune: hyperparameter search for semi-supervised multimodal emotion recognition."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def search(*args: Any, **kwargs: Any):
    """Run a search; see `mer_tune.search.search` (imported lazily: Ray is heavy)."""
    from .tuning import search as _search

    return _search(*args, **kwargs)


__all__ = ["search", "__version__"]
