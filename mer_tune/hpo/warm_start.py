"""Warm starts: the finished trials of earlier searches, told to a new search's study.

A trial of an earlier search is imported only when its score means the same thing here:
the same data (fingerprint) and the same outer holdout (an earlier search that trained on
this search's holdout would let those labels steer it), and a config that agrees with
this search's base config on every key this search does not search. Its values for this
search's parameters must lie in this space (inside the bounds, among the choices). The
model and fold seeds are the one difference allowed: they change the noise, not the
setting.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd

from mer_tune.errors import UsageError
from mer_tune.hpo.folder import SearchFolder
from mer_tune.hpo.spaces import Space, trial_config, unused, value_at
from mer_tune.method.config import Config, valid_paths

NOISE_KEYS = {"seed", "eval.seed"}  # keys whose values change the draw, not the setting


@dataclass
class Imported:
    points: list[tuple[dict[str, Any], list[float]]] = field(default_factory=list)
    per_search: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (used, seen)
    reasons: dict[str, int] = field(default_factory=dict)  # why trials were left out

    def line(self) -> str:
        parts = [f"{n} {used} of {seen}" for n, (used, seen) in self.per_search.items()]
        why = ", ".join(f"{k}: {v}" for k, v in sorted(self.reasons.items()))
        text = f"warm start: {len(self.points)} earlier trials imported ({'; '.join(parts)})"
        return text + (f"; left out: {why}" if why else "")


def holdout_names(folder: SearchFolder) -> list[str]:
    if not folder.holdout_file.exists():
        return []
    return sorted(pd.read_csv(folder.holdout_file, dtype=str, keep_default_na=False)["name"])


def in_space(dist: optuna.distributions.BaseDistribution, value: Any) -> bool:
    if isinstance(dist, optuna.distributions.CategoricalDistribution):
        return value in dist.choices
    return isinstance(value, int | float) and dist.low <= value <= dist.high


def _leaves(cfg: Config) -> dict[str, Any]:
    return {p: value_at(cfg, p) for p in valid_paths(cfg)}


def import_trials(
    root: Path,
    names: list[str],
    fingerprint: str,
    holdout: list[str],
    base: Config,
    space: Space,
    goals: list[str] | None = None,
) -> Imported:
    """The finished trials of the searches `names` (in `root`) that this search can use,
    as (values of this space's parameters, their scores on `goals`). One line on any
    search that cannot be used at all."""
    goals = goals or ["weighted_f1"]
    out = Imported()
    here = _leaves(base)
    for name in names:
        option = f"--from-search {name}"
        folder = SearchFolder.named(root, name, "--from-search")
        if not folder.state_file.exists() or folder.results() is None:
            raise UsageError(f"{option}: no finished search of that name in {root}")
        theirs = (folder.record().dataset or {}).get("fingerprint")
        if theirs != fingerprint:
            raise UsageError(
                f"{option}: the data fingerprint differs ({theirs} there, {fingerprint} "
                "here): its scores are of other data"
            )
        if holdout_names(folder) != holdout:
            raise UsageError(
                f"{option}: its outer holdout differs from this search's (--holdout and "
                "--holdout-seed must match): its trials may have trained on this holdout"
            )
        their_base, their_space = folder.base(), folder.space()
        results = folder.results()
        finished = results[results["status"] == "FINISHED"]
        used = 0
        for row in finished.to_dict("records"):
            values = {k: row.get(k) for k in their_space.params if not unused(row.get(k))}
            point, why = _point(trial_config(their_base, values), here, space)
            missing = [g for g in goals if unused(row.get(g))]
            if missing and not why:
                why = f"no {missing[0]} recorded"
            if why:
                out.reasons[why] = out.reasons.get(why, 0) + 1
                continue
            out.points.append((point, [float(row[g]) for g in goals]))
            used += 1
        out.per_search[name] = (used, len(finished))
    return out


def _point(cfg: Config, here: dict[str, Any], space: Space) -> tuple[dict, str | None]:
    """(this space's values of an earlier trial's config, why it cannot be used or None)."""
    leaves = _leaves(cfg)
    for key, value in here.items():
        if key in space.params or key in NOISE_KEYS:
            continue
        if not _same(leaves.get(key), value):
            return {}, f"{key} differs"
    point: dict[str, Any] = {}
    for key, dist in space.params.items():
        if not space.active(key, point):
            continue
        value = leaves.get(key)
        if not in_space(dist, value):
            return {}, f"{key} outside this space"
        point[key] = value
    return point, None


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        try:
            return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
        except (TypeError, ValueError):
            return False
    if isinstance(a, np.generic):
        a = a.item()
    return a == b
