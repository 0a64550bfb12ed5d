"""What a search optimises: one objective, or several traded off on a Pareto front.

`--objective` names one or more of OBJECTIVES. With more than one, Optuna's TPE sampler
runs in its multi-objective form, the first objective is the rung metric an early-stopping
scheduler compares, and the result is a Pareto front rather than one best trial.
`--pick "max weighted_f1 where min_class_f1>=0.6"` chooses one point of the front.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

from mer_tune.errors import UsageError

# The official score: a search's one objective unless told otherwise, the score a trial
# is ranked by and the rung metric of an early-stopping scheduler.
METRIC = "weighted_f1"
# name -> direction; what each one is, in the README's words
OBJECTIVES = {
    "weighted_f1": "max",  # the official score
    "min_class_f1": "max",  # the worst class's F1 (the rare surprise class, mostly)
    "train_seconds": "min",  # seconds the trial's pipeline ran (cached stages cost little)
    "pseudo_precision": "max",  # share of pseudo-labels that are right (synthetic data only)
}
# Objectives a trial reports after every epoch, so that an early-stopping scheduler can
# compare trials on them at a rung.
PER_EPOCH = ("weighted_f1", "min_class_f1", "train_seconds")


def parse(names: list[str] | tuple[str, ...] | str | None) -> list[str]:
    """The objectives asked for (comma-separated or repeated), in order, checked."""
    if not names:
        return [METRIC]
    if isinstance(names, str):
        names = [names]
    out: list[str] = []
    for item in names:
        for name in (n.strip() for n in str(item).split(",")):
            if name not in OBJECTIVES:
                raise UsageError(
                    f"--objective {name}: unknown objective; valid: {', '.join(OBJECTIVES)}"
                )
            if name in out:
                raise UsageError(f"--objective {name}: named twice")
            out.append(name)
    return out


def check_scheduler(objectives: list[str], scheduler: str) -> None:
    """The first objective is the rung metric of --scheduler asha: it must be reported
    every epoch."""
    if scheduler == "asha" and objectives[0] not in PER_EPOCH:
        raise UsageError(
            f"--scheduler asha compares trials on the first objective, and "
            f"{objectives[0]} is known only when a trial ends; put one of "
            f"{', '.join(PER_EPOCH)} first"
        )


def rung(objectives: list[str]) -> tuple[str, str]:
    """(metric, mode) that Tune ranks and an early-stopping scheduler compares: the first
    objective, in its own direction (a minimised one is never compared as a maximum)."""
    return objectives[0], OBJECTIVES[objectives[0]]


def modes(objectives: list[str]) -> list[str]:
    return [OBJECTIVES[o] for o in objectives]


def directions(objectives: list[str]) -> list[str]:
    """Optuna's study directions of the objectives."""
    return ["maximize" if m == "max" else "minimize" for m in modes(objectives)]


def pareto_front(table: pd.DataFrame, objectives: list[str]) -> pd.DataFrame:
    """The finished trials no other finished trial dominates (at least as good on every
    objective and better on one), sorted by the first objective, best first."""
    done = table[table["status"] == "FINISHED"].dropna(subset=objectives)
    if done.empty:
        return done
    # As "larger is better" on every column.
    signs = np.array([1.0 if OBJECTIVES[o] == "max" else -1.0 for o in objectives])
    values = done[objectives].to_numpy(dtype=float) * signs
    keep = []
    for v in values:
        dominated = np.any(np.all(values >= v, axis=1) & np.any(values > v, axis=1))
        keep.append(not dominated)
    front = done[np.asarray(keep)]
    return front.sort_values(objectives[0], ascending=OBJECTIVES[objectives[0]] == "min")


# ---------------------------------------------------------------- --pick

_OPS = {
    ">=": np.greater_equal,
    "<=": np.less_equal,
    ">": np.greater,
    "<": np.less,
    "==": np.isclose,
}
_CONDITION = re.compile(r"^\s*([a-z_0-9]+)\s*(>=|<=|==|>|<)\s*([-+0-9.eE]+)\s*$")


@dataclass(frozen=True)
class Pick:
    """`max|min OBJECTIVE [where OBJECTIVE OP NUMBER [and ...]]`."""

    goal: str  # max or min
    objective: str
    conditions: tuple[tuple[str, str, float], ...]
    text: str


def parse_pick(text: str, objectives: list[str]) -> Pick:
    """A --pick expression, checked against the search's objectives; one line if not."""
    where = f"--pick {text!r}"
    head, _, tail = text.strip().partition(" where ")
    words = head.split()
    if len(words) != 2 or words[0] not in ("max", "min"):
        raise UsageError(f"{where}: expected 'max|min OBJECTIVE [where OBJECTIVE>=NUMBER and ...]'")
    goal, objective = words
    conditions = []
    for part in tail.split(" and ") if tail.strip() else []:
        match = _CONDITION.match(part)
        if not match:
            raise UsageError(f"{where}: cannot read the condition {part.strip()!r}")
        name, op, number = match.groups()
        try:
            value = float(number)
        except ValueError:
            raise UsageError(f"{where}: {number!r} is not a number") from None
        if not math.isfinite(value):  # 1e400 reads as inf
            raise UsageError(f"{where}: {number!r} is not a finite number")
        conditions.append((name, op, value))
    for name in [objective] + [c[0] for c in conditions]:
        if name not in objectives:
            raise UsageError(
                f"{where}: {name} is not an objective of this search ({', '.join(objectives)})"
            )
    return Pick(goal, objective, tuple(conditions), text)


def apply_pick(front: pd.DataFrame, pick: Pick) -> pd.Series:
    """The front point `pick` asks for; one line naming the closest point when no
    point meets its conditions."""
    ok = np.ones(len(front), dtype=bool)
    for name, op, value in pick.conditions:
        ok &= _OPS[op](front[name].to_numpy(dtype=float), value)
    if ok.any():
        chosen = front[ok]
        col = chosen[pick.objective].astype(float)
        return chosen.loc[col.idxmax() if pick.goal == "max" else col.idxmin()]
    # The closest: the smallest total shortfall, each relative to the condition's value.
    shortfall = np.zeros(len(front))
    for name, op, value in pick.conditions:
        got = front[name].to_numpy(dtype=float)
        gap = value - got if op in (">=", ">") else got - value
        shortfall += np.maximum(np.abs(gap) if op == "==" else gap, 0) / max(abs(value), 1e-9)
    near = front.iloc[int(np.argmin(shortfall))]
    shown = ", ".join(f"{n} {_fmt(near[n])}" for n, _, _ in pick.conditions)
    raise UsageError(
        f"--pick {pick.text!r}: no point of the Pareto front meets the conditions; "
        f"closest: trial {int(near['trial'])} ({shown})"
    )


def _fmt(value: float) -> str:
    return (
        "nan"
        if value is None or (isinstance(value, float) and math.isnan(value))
        else f"{value:.4g}"
    )
