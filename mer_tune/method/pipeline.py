"""One trial of the method: oversample, pretrain, finetune, pseudo-label, retrain, vote.

`run` strings the stages (stages.py) together over stratified folds, each fold model
picking its epochs on a slice of its own training part (or, with eval.select_on=scored,
on the fold it is scored on), and scores the vote. A stage cache (any object with
`get_or_compute(stage, key, compute)`) may be passed in; stages.STAGES says what each
stage's output depends on. This module imports neither Ray nor MLflow.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import f1_score
from sklearn.model_selection import StratifiedKFold, train_test_split

from mer_tune.data.layout import LABELLED, MERData
from mer_tune.errors import MerTuneError
from mer_tune.method import train
from mer_tune.method.config import Config
from mer_tune.method.fold import (
    ALL_LABELLED,
    FoldResult,
    FoldTrainer,
    MemoryCache,
    Report,
    StageCache,
    selection_split,
)
from mer_tune.method.stages import STAGES
from mer_tune.method.voting import decide, vote

# Part of this module's interface (benchmarks and tests use them from here).
__all__ = ["MemoryCache", "Report", "StageCache", "selection_split"]


def evaluate(y: np.ndarray, pred: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """The official scorer (weighted F1) and per-class F1."""
    per_class = f1_score(y, pred, labels=range(len(classes)), average=None, zero_division=0)
    return {
        "weighted_f1": float(f1_score(y, pred, average="weighted")),
        "per_class_f1": {c: float(v) for c, v in zip(classes, per_class, strict=True)},
    }


def fold_splits(
    y: np.ndarray, folds: int, seed: int, repeats: int = 1
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified k-fold positions into y; folds=1 is a stratified 80/20 hold-out.
    With repeats > 1, that many different splits (seeds seed, seed+1, ...), one after
    the other: fold r * folds + k is fold k of repeat r."""
    out: list[tuple[np.ndarray, np.ndarray]] = []
    for r in range(repeats):
        if folds == 1:
            tr, va = train_test_split(
                np.arange(len(y)), test_size=0.2, stratify=y, random_state=seed + r
            )
            out.append((np.sort(tr), np.sort(va)))
        else:
            skf = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed + r)
            out += [(tr, va) for tr, va in skf.split(np.zeros(len(y)), y)]
    return out


def min_per_class(folds: int, select_on: str) -> int:
    """Fewest labelled samples of a class that still give every fold (and, with
    select_on=inner, every fold's epoch-selection slice and what it fits on) one."""
    m = max(2, folds)
    if select_on == "inner":
        # The training part of a fold keeps m - ceil(m / k) of the class (k = 5 for the
        # 80/20 split): one for the selection slice, one to fit on.
        k = 5 if folds == 1 else folds
        while m - math.ceil(m / k) < 2:
            m += 1
    return m


def check_counts(data: MERData, cfg: Config) -> None:
    """One line naming the class when a class is too small for the folds asked for."""
    need = min_per_class(cfg.eval.folds, cfg.eval.select_on)
    for cls, count in data.class_counts().items():
        if count < need:
            how = " with epoch selection on an inner slice" if cfg.eval.select_on == "inner" else ""
            raise MerTuneError(
                f"class '{cls}' has {count} labelled samples; {cfg.eval.folds} fold(s){how} "
                f"need at least {need} (fewer folds, or eval.select_on=scored, or more labels)"
            )


@dataclass
class RunResult:
    weighted_f1: float  # mean over folds
    fold_f1: list[float]
    per_class_f1: dict[str, float]
    pseudo_added: dict[str, int]  # summed over folds (the last round's)
    pseudo_precision: float | None
    seconds: dict[str, float]
    predictions: pd.DataFrame
    notes: list[str] = field(default_factory=list)
    cache_hits: list[str] = field(default_factory=list)
    # Which data indices each fold fit on, selected its epochs on, scored, pseudo-labelled.
    splits: pd.DataFrame | None = None
    # Vote probabilities on `predict_idx`, averaged over the fold models (None if not asked).
    extra_probs: np.ndarray | None = None
    # Each fold model's own vote on `predict_idx` (folds, samples, classes), before the
    # decision offsets: how much the averaged vote owes to training randomness.
    fold_votes: np.ndarray | None = None
    offsets: np.ndarray | None = None
    # Pseudo-labels per class that each self-training round trained on, summed over folds.
    pseudo_by_round: list[dict[str, int]] = field(default_factory=list)

    def metrics(self) -> dict[str, Any]:
        return {
            "weighted_f1": self.weighted_f1,
            "fold_weighted_f1": self.fold_f1,
            "per_class_f1": self.per_class_f1,
            "pseudo_labels_added": self.pseudo_added,
            "pseudo_labels_by_round": self.pseudo_by_round,
            "pseudo_label_precision": self.pseudo_precision,
            "seconds_per_stage": self.seconds,
            "notes": self.notes,
        }


def pick_device(prefer: str | None = None) -> torch.device:
    if prefer == "cuda" and not torch.cuda.is_available():
        raise MerTuneError("--device cuda: no CUDA device is visible")
    if prefer:
        return torch.device(prefer)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _split_table(results: list[FoldResult]) -> pd.DataFrame:
    parts = [
        pd.DataFrame({"fold": r.fold, "role": role, "index": idx})
        for r in results
        for role, idx in r.roles.items()
    ]
    return pd.concat(parts, ignore_index=True)


def train_folds(
    data: MERData,
    cfg: Config,
    cache: StageCache | None = None,
    report: Report | None = None,
    device: str | None = None,
    predict_idx: np.ndarray | None = None,
    feats: train.Features | None = None,
) -> tuple[list[FoldResult], list[str]]:
    """Every fold model of one config (and their notes), reporting each fold's score as
    it finishes: a fold-wise pruner may stop the run there. `feats`: the features already
    on the device (else uploaded here)."""
    check_counts(data, cfg)
    report = report or (lambda *a, **k: None)
    cache = cache or MemoryCache()
    feats = feats or train.Features(data, pick_device(device))
    y = data.labels[data.indices(LABELLED)]
    notes: list[str] = []

    def collect(kind: str, **fields: Any) -> None:
        if kind == "note" and fields["text"] not in notes:
            notes.append(fields["text"])
        report(kind, **fields)

    folds = fold_splits(y, cfg.eval.folds, cfg.eval.seed, cfg.eval.repeats)
    trainer = FoldTrainer(data, cfg, feats, cache, collect)
    results: list[FoldResult] = []
    for k, (tr, va) in enumerate(folds):
        res = trainer.run(k, tr, va, predict_idx)
        assert res is not None  # a whole fold (no `upto`)
        results.append(res)
        pred = _decision(results[-1].logits, cfg, data.classes).argmax(1)
        f1 = evaluate(data.labels[results[-1].val_idx], pred, data.classes)["weighted_f1"]
        report("fold", fold=k, weighted_f1=f1, folds=len(folds))
    return results, notes


def warm(
    data: MERData,
    cfg: Config,
    cache: StageCache,
    upto: str,
    device: str | None = None,
    report: Report | None = None,
) -> None:
    """Every fold's stages up to and including `upto` (a name in stages.STAGES),
    computed into `cache` as `run` would, and nothing after them: what every trial of a
    search shares, trained once before the trials start."""
    if upto not in STAGES:
        raise ValueError(f"upto={upto!r}: expected one of {', '.join(STAGES)}")
    check_counts(data, cfg)
    feats = train.Features(data, pick_device(device))
    y = data.labels[data.indices(LABELLED)]
    trainer = FoldTrainer(data, cfg, feats, cache, report or (lambda *a, **f: None))
    for k, (tr, va) in enumerate(fold_splits(y, cfg.eval.folds, cfg.eval.seed, cfg.eval.repeats)):
        trainer.run(k, tr, va, upto=upto)
        if not STAGES[upto].fold_dependent:
            break  # every fold shares it (and every stage before it)


def _offsets(cfg: Config, classes: list[str]) -> np.ndarray:
    return np.asarray([cfg.offset_of(c) for c in classes])


def _decision(logits: dict[str, np.ndarray], cfg: Config, classes: list[str]) -> np.ndarray:
    """The vote of the heads' logits, then the decision stage's offsets."""
    return decide(vote(logits, cfg.voting.weights, cfg.voting.mode), _offsets(cfg, classes))


def score(data: MERData, cfg: Config, results: list[FoldResult]) -> RunResult:
    """Vote and score trained fold models under `cfg`'s voting and decision sections.
    Nothing here trains: a voting or decision trial is this alone on cached heads."""
    t0 = time.perf_counter()
    rows, fold_f1, all_y, all_p = [], [], [], []
    names = np.asarray(data.classes, dtype=object)
    for res in results:
        probs = _decision(res.logits, cfg, data.classes)
        pred = probs.argmax(1)
        yt = data.labels[res.val_idx]
        fold_f1.append(evaluate(yt, pred, data.classes)["weighted_f1"])
        all_y.append(yt)
        all_p.append(pred)
        frame = pd.DataFrame(probs, columns=[f"prob_{c}" for c in data.classes])
        frame.insert(0, "name", data.names[res.val_idx])
        frame.insert(1, "fold", res.fold)
        frame.insert(2, "label", names[yt])
        frame.insert(3, "pred", names[pred])
        rows.append(frame)
    extra = votes = None
    if results and results[0].extra_logits is not None:
        # Vote probabilities averaged over the fold models, then the decision offsets.
        votes = np.stack(
            [vote(r.extra_logits, cfg.voting.weights, cfg.voting.mode) for r in results]
        )
        extra = decide(votes.mean(axis=0), _offsets(cfg, data.classes))
    seconds: dict[str, float] = {}
    for res in results:
        for k, v in res.seconds.items():
            seconds[k] = seconds.get(k, 0.0) + v
    added = {c: sum(r.pseudo_added[c] for r in results) for c in data.classes}
    precs = [r.pseudo_precision for r in results if r.pseudo_precision is not None]
    pooled = evaluate(np.concatenate(all_y), np.concatenate(all_p), data.classes)
    seconds["vote"] = time.perf_counter() - t0
    return RunResult(
        weighted_f1=float(np.mean(fold_f1)),
        fold_f1=fold_f1,
        per_class_f1=pooled["per_class_f1"],
        pseudo_added=added,
        pseudo_precision=float(np.mean(precs)) if precs else None,
        seconds=seconds,
        predictions=pd.concat(rows, ignore_index=True),
        cache_hits=sorted({h for r in results for h in r.cache_hits}),
        splits=_split_table(results),
        extra_probs=extra,
        fold_votes=votes,
        offsets=_offsets(cfg, data.classes),
        pseudo_by_round=_by_round(results, data.classes),
    )


def _by_round(results: list[FoldResult], classes: list[str]) -> list[dict[str, int]]:
    """Pseudo-labels per class that each self-training round trained on, summed over folds."""
    rounds = [r.pseudo_by_round for r in results if r.pseudo_by_round is not None]
    return [
        {c: int(sum(r[k, i] for r in rounds if k < len(r))) for i, c in enumerate(classes)}
        for k in range(max((len(r) for r in rounds), default=0))
    ]


def run(
    data: MERData,
    cfg: Config,
    cache: StageCache | None = None,
    report: Report | None = None,
    device: str | None = None,
    predict_idx: np.ndarray | None = None,
    feats: train.Features | None = None,
) -> RunResult:
    """Stratified k-fold evaluation of one config: weighted F1 per fold and their mean.
    With `predict_idx`, every fold model also predicts those samples (e.g. the test
    names), and their vote probabilities are averaged over the folds."""
    results, notes = train_folds(data, cfg, cache, report, device, predict_idx, feats)
    out = score(data, cfg, results)
    out.notes = notes
    return out


def fit_all(
    data: MERData,
    cfg: Config,
    predict_idx: np.ndarray,
    cache: StageCache | None = None,
    report: Report | None = None,
    device: str | None = None,
) -> np.ndarray:
    """One model trained on every labelled sample (best epochs picked on a stratified
    inner slice of them), and its vote probabilities on `predict_idx`."""
    report = report or (lambda *a, **k: None)
    feats = train.Features(data, pick_device(device))
    everything = np.arange(len(data.indices(LABELLED)))
    trainer = FoldTrainer(data, cfg, feats, cache or MemoryCache(), report)
    res = trainer.run(ALL_LABELLED, everything, np.zeros(0, dtype=np.int64), predict_idx)
    assert res is not None and res.extra_logits is not None
    return _decision(res.extra_logits, cfg, data.classes)


def predict_names(
    data: MERData,
    cfg: Config,
    idx: np.ndarray,
    cache: StageCache | None = None,
    report: Report | None = None,
    device: str | None = None,
) -> np.ndarray:
    """Class probabilities for the samples `idx` (e.g. the test set), averaged over the
    k fold models, as the challenge protocol does: each fold trains on the other folds'
    labelled samples."""
    res = run(data, cfg, cache=cache, report=report, device=device, predict_idx=idx)
    assert res.extra_probs is not None
    return res.extra_probs
