"""The outer holdout of a search: labelled samples set aside before any trial runs.

No trial, epoch choice, threshold, pseudo-label or vote ever sees their labels: the data
handed to trials carries them as split `holdout` with label -1 (their features may join
the unlabelled pool, as test names do). Only the confirm step, after selection is over,
scores the chosen configs on them. This module imports neither Ray nor MLflow.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from mer_tune.data.layout import HOLDOUT, LABELLED, DataOptions, MERData
from mer_tune.data.resolve import reopen, resolve
from mer_tune.errors import MerTuneError, UsageError
from mer_tune.hpo.folder import SearchFolder, read_table
from mer_tune.hpo.record import SearchRecord
from mer_tune.method.config import Config
from mer_tune.method.pipeline import min_per_class
from mer_tune.outputs import write_text

MAX_FRACTION = 0.5


@dataclass(frozen=True)
class Holdout:
    idx: np.ndarray  # data indices, ascending
    names: np.ndarray  # their sample names
    labels: np.ndarray  # their class indices (known to the driver only)

    def __len__(self) -> int:
        return len(self.idx)


def check_fraction(fraction: float) -> None:
    if not 0.0 <= fraction <= MAX_FRACTION:
        raise UsageError(f"--holdout {fraction:g}: must be between 0 and {MAX_FRACTION:g}")


def choose(
    data: MERData, fraction: float, seed: int, folds: int, select_on: str = "inner"
) -> Holdout:
    """A stratified holdout: round(n * fraction) and at least one of every class, drawn
    with `seed`. Refuses (one line, naming the class) when what stays cannot feed the
    folds; fraction 0 gives an empty holdout."""
    check_fraction(fraction)
    lab = data.indices(LABELLED)
    y = data.labels[lab]
    rng = np.random.default_rng(seed)
    need = min_per_class(folds, select_on)
    taken = []
    for c, cls in enumerate(data.classes):
        members = lab[y == c]
        k = max(1, round(len(members) * fraction)) if fraction > 0 else 0
        if len(members) - k < need:
            how = "with epoch selection on an inner slice " if select_on == "inner" else ""
            raise UsageError(
                f"class '{cls}' has {len(members)} labelled samples: the holdout takes {k}, "
                f"leaving {len(members) - k}, and {folds} fold(s) {how}need at least {need} "
                "(lower --holdout or --folds, or add labelled samples)"
            )
        if k:
            taken.append(rng.choice(members, size=k, replace=False))
    idx = np.sort(np.concatenate(taken)) if taken else np.zeros(0, dtype=np.int64)
    return Holdout(idx, data.names[idx], data.labels[idx].copy())


def withhold(data: MERData, holdout: Holdout) -> MERData:
    """The data the trials get: holdout samples become split `holdout` with label -1,
    and the fingerprint changes with them (cached stages never mix the two)."""
    if not len(holdout):
        return data
    split = data.split.copy()
    labels = data.labels.copy()
    split[holdout.idx] = HOLDOUT
    labels[holdout.idx] = -1
    digest = hashlib.sha256(
        (data.fingerprint + "\n" + "\n".join(map(str, holdout.names))).encode()
    ).hexdigest()[:16]
    return dataclasses.replace(data, split=split, labels=labels, fingerprint=digest)


def write_csv(path: Path, data: MERData, holdout: Holdout) -> None:
    """holdout.csv: the names set aside, with their labels (the user's own)."""
    classes = np.asarray(data.classes, dtype=object)
    table = pd.DataFrame({"name": holdout.names, "discrete": classes[holdout.labels]})
    write_text(path, table.to_csv(index=False))


def check_same(path: Path, holdout: Holdout) -> None:
    """Refuse to go on when the data no longer gives the holdout recorded in `path`."""
    if not path.exists():
        raise MerTuneError(f"{path}: missing; this search's holdout cannot be checked")
    kept = read_table(path, ("name",), dtype=str, keep_default_na=False)["name"].tolist()
    now = [str(n) for n in holdout.names]
    if kept != now:
        differ = sorted(set(kept) ^ set(now))
        example = f" (e.g. '{differ[0]}')" if differ else ""
        raise MerTuneError(
            f"{path}: the data now gives a different holdout{example}; "
            "the search cannot go on with other held-out samples"
        )


def search_data(folder: SearchFolder, record: SearchRecord, base: Config) -> SearchData:
    """(the data a search started on, its holdout, what its trials see), checked against
    what the search recorded: the same fingerprint and holdout, or a one-line refusal."""
    if record.dataset is None:  # a search from before the data was recorded in full
        dataset = resolve(record.data, DataOptions(classes=tuple(base.data.classes)))
    else:
        dataset = reopen(record.dataset, str(folder.state_file))
    ho = choose(
        dataset, record.holdout, record.the_holdout_seed, base.eval.folds, base.eval.select_on
    )
    if len(ho):
        check_same(folder.holdout_file, ho)
    return SearchData(dataset, ho, withhold(dataset, ho))


@dataclass(frozen=True)
class SearchData:
    dataset: MERData  # as the search started on it
    holdout: Holdout
    trials: MERData  # what the trials see: the holdout withheld
