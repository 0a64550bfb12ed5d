"""One fold model through the cached stages: pretrain, finetune, then rounds of
pseudo-labelling and retraining, each stage read from the cache when its key matches.

`FoldTrainer` holds what every fold of one config shares (the data, the config, the
features on the device, the cache, the progress report); `run` trains one fold. The
fold's epochs are picked on a slice of its own training part (`selection_split`), or
with eval.select_on=scored on the fold it is scored on. This module imports neither Ray
nor MLflow.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from mer_tune.data.layout import LABELLED, MERData
from mer_tune.method import train
from mer_tune.method.config import Config
from mer_tune.method.stages import (
    FoldRun,
    FoldSamples,
    Picked,
    Round,
    derive_seed,
    finetune_stage,
    fold_pool,
    pretrain_stage,
    retrain_key,
    retrain_stage,
    stage_keys,
)
from mer_tune.method.voting import doubt, select_pseudo_labels

Report = Callable[..., None]
ALL_LABELLED = -1  # the fold number of a model trained on every labelled sample
# Roles a labelled or pool sample plays in a fold, as recorded in RunResult.splits.
FIT, SELECT, SCORED, PSEUDO = "fit", "select", "scored", "pseudo"


class StageCache(Protocol):
    def get_or_compute(self, stage: str, key: dict, compute: Callable[[], Any]) -> Any: ...


class MemoryCache:
    """Keeps stage outputs for the length of one run: the fold-independent pretraining
    is computed once, not once per fold. Nothing outlives the run."""

    def __init__(self) -> None:
        self._store: dict[str, Any] = {}

    def get_or_compute(self, stage: str, key: dict, compute: Callable[[], Any]) -> Any:
        digest = repr(sorted(key.items()))
        if digest not in self._store:
            self._store[digest] = compute()
        return self._store[digest]


@dataclass
class FoldResult:
    fold: int
    val_idx: np.ndarray  # data indices of the scored fold
    logits: dict[str, np.ndarray]  # final heads on the scored fold
    pseudo_added: dict[str, int]
    pseudo_precision: float | None
    seconds: dict[str, float]
    cache_hits: list[str] = field(default_factory=list)
    state: dict[str, torch.Tensor] | None = None  # the final model's weights
    roles: dict[str, np.ndarray] = field(default_factory=dict)  # role -> data indices
    extra_logits: dict[str, np.ndarray] | None = None  # final heads on `predict_idx`
    pseudo_by_round: np.ndarray | None = None  # (rounds, classes) pseudo-labels per round


@dataclass
class SelfTrained:
    """What self-training leaves for the fold's result (or the finetuned model's, when
    it does not run)."""

    logits: dict[str, np.ndarray]  # final heads on the scored fold
    state: dict[str, torch.Tensor]
    added: dict[str, int]
    precision: float | None = None
    pseudo_idx: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    by_round: np.ndarray | None = None


def stratified_slice(
    y: np.ndarray, fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Split positions into y into (rest, slice): of each class, round(n * fraction)
    samples and at least one go to the slice, while the rest keeps at least one (a
    class with a single sample stays whole in the rest). Both returned sorted."""
    taken = []
    for c in np.unique(y):
        members = np.flatnonzero(y == c)
        k = min(max(1, round(len(members) * fraction)), len(members) - 1)
        if k > 0:
            taken.append(rng.choice(members, size=k, replace=False))
    chosen = np.sort(np.concatenate(taken)) if taken else np.zeros(0, dtype=np.int64)
    rest = np.setdiff1d(np.arange(len(y)), chosen)
    return rest, chosen


def selection_split(
    cfg: Config, fold: int, y: np.ndarray, tr: np.ndarray, va: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(positions the fold model fits on, positions that pick its best epoch).
    select_on=inner (or no scored fold at all): a stratified slice of the training part;
    scored: the scored fold itself (MERTools' protocol)."""
    if cfg.eval.select_on == "scored" and len(va):
        return tr, va
    rng = np.random.default_rng(derive_seed(cfg.seed, "select", fold))
    rest, chosen = stratified_slice(y[tr], cfg.eval.select_fraction, rng)
    return tr[rest], tr[chosen]


@dataclass
class _Stages:
    """One fold's stages through the cache, each reported and timed."""

    cache: StageCache
    report: Report
    fold: int
    keys: dict[str, dict]
    seconds: dict[str, float] = field(default_factory=dict)

    def hook(self, stage: str, epoch: int, values: dict) -> None:
        self.report("epoch", fold=self.fold, stage=stage, epoch=epoch, **values)

    def cached(self, stage: str, compute: Callable[[], Any], key: dict | None = None) -> Any:
        label = "self_training" if stage == "pseudo" else stage
        self.report("stage", fold=self.fold, stage=label)
        t0 = time.perf_counter()
        out = self.cache.get_or_compute(stage, key or self.keys[stage], compute)
        self.seconds[label] = self.seconds.get(label, 0.0) + time.perf_counter() - t0
        return out


@dataclass
class FoldTrainer:
    data: MERData
    cfg: Config
    feats: train.Features
    cache: StageCache
    report: Report

    def run(
        self,
        fold: int,
        tr: np.ndarray,
        va: np.ndarray,
        predict_idx: np.ndarray | None = None,
        upto: str | None = None,
    ) -> FoldResult | None:
        """Train one fold model on the labelled positions `tr` (plus pseudo-labels) and
        give its final heads on the scored positions `va` (which may be empty). Each stage
        runs through the cache, computed from its own config sections inside its compute
        call. With `upto`, only the stages up to that one are computed (into the cache),
        and nothing is returned."""
        data, cfg, feats = self.data, self.cfg, self.feats
        lab = data.indices(LABELLED)
        y = data.labels[lab]
        fit, sel = selection_split(cfg, fold, y, tr, va)
        transductive = cfg.eval.inner_pool == "transductive"
        samples = FoldSamples(fold, lab[fit], y[fit], lab[sel], y[sel], lab[va], transductive)
        st = _Stages(self.cache, self.report, fold, stage_keys(cfg, data.fingerprint, fold))
        run = FoldRun(data, feats, samples, cfg.seed, st.hook)
        pre_state = st.cached(
            "pretrain",
            lambda: pretrain_stage(
                data, feats, cfg.data, cfg.model, cfg.pretrain,
                train.Steps.of(cfg, supervised=False), cfg.seed, st.hook,
            ),
        )  # fmt: skip
        if upto == "pretrain":
            return None
        fine = st.cached(
            "finetune",
            lambda: finetune_stage(
                run, pre_state, cfg.data, cfg.model, cfg.oversample, cfg.finetune,
                train.Steps.of(cfg),
            ),
        )  # fmt: skip
        if upto == "finetune":
            return None
        out = self._self_training(run, pre_state, fine, st)
        if upto is not None:
            return None
        return self._result(samples, out, st, predict_idx)

    def _self_training(
        self, run: FoldRun, pre_state: dict, fine: dict[str, Any], st: _Stages
    ) -> SelfTrained:
        data, st_cfg = self.data, self.cfg.self_training
        out = SelfTrained(fine["val"], fine["state"], {c: 0 for c in data.classes})
        unl = fold_pool(data, self.cfg.data, run.samples)
        if not (st_cfg.enabled and st_cfg.rounds > 0):
            return out
        if len(unl) == 0:
            self.report("note", text="the unlabelled pool is empty: self-training skipped")
            return out
        picked, out.by_round, out.logits, out.state = self._rounds(run, pre_state, fine, st)
        out.pseudo_idx = unl[picked.keep]
        for c in picked.labels:
            out.added[data.classes[int(c)]] += 1
        if data.hidden_labels is not None and len(picked.keep):
            # A scored sample in the pool (eval.inner_pool) has its label in data.labels.
            hidden = data.hidden_labels[out.pseudo_idx]
            truth = np.where(hidden == -1, data.labels[out.pseudo_idx], hidden)
            known = truth != -1  # a clip of no class (NO_CLASS) counts as a wrong label
            if known.any():
                out.precision = float((truth[known] == picked.labels[known]).mean())
        return out

    def _rounds(
        self, run: FoldRun, pre_state: dict, fine: dict[str, Any], st: _Stages
    ) -> tuple[Picked, np.ndarray, dict[str, np.ndarray], dict[str, torch.Tensor]]:
        """Rounds of pseudo-labelling the pool (by self_training.confidence, which never
        reads the searched voting weights) and retraining (stages.retrain_stage), each
        round labelling the whole pool afresh with the latest model. Returns (the last
        round's pseudo-labels the final model trained on, their count per class in each
        round, the scored fold's logits, the final weights)."""
        data, cfg = self.data, self.cfg
        stc = cfg.self_training
        unl = fold_pool(data, cfg.data, run.samples)
        thresholds = np.asarray([cfg.threshold_of(c) for c in data.classes])
        steps, epochs = train.Steps.of(cfg), cfg.retrain_epochs()
        logits_pool, val, state = fine["pool"], fine["val"], fine["state"]
        up = st.keys["finetune"]
        per_round = []
        picked = Picked(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))
        for rnd in range(stc.rounds):
            chosen = Picked(*select_pseudo_labels(doubt(logits_pool, stc), thresholds))
            per_round.append(np.bincount(chosen.labels, minlength=len(data.classes)))
            if len(chosen.keep) == 0:
                break  # the last round's model and the labels it trained on stay
            picked = chosen
            start = pre_state if stc.init == "pretrained" else state
            schedule = Round(rnd, epochs, steps, with_pool=rnd + 1 < stc.rounds)
            key = retrain_key(
                up, rnd, stc.init, epochs, picked, data.names[unl], schedule.with_pool
            )
            out = st.cached(
                "pseudo",
                lambda start=start, picked=picked, schedule=schedule: retrain_stage(
                    run, start, fine, picked, cfg.data, cfg.model, schedule
                ),
                key,
            )
            val, state, logits_pool = out["val"], out["state"], out.get("pool")
            # Under init=pretrained a round's model depends on its pseudo-labels alone, not
            # on the round before (whose labels it was chosen with).
            up = up if stc.init == "pretrained" else key
        by_round = np.asarray(per_round, dtype=np.int64).reshape(-1, len(data.classes))
        return picked, by_round, val, state

    def _result(
        self,
        samples: FoldSamples,
        out: SelfTrained,
        st: _Stages,
        predict_idx: np.ndarray | None,
    ) -> FoldResult:
        extra = None
        if predict_idx is not None:
            model = train.make_model(
                self.data, self.cfg.model, derive_seed(self.cfg.seed, "init"), self.feats.device
            )
            model.load_state_dict(out.state)
            extra = train.predict(model, self.feats, predict_idx)
        roles = {
            FIT: samples.fit,
            SELECT: samples.select,
            SCORED: samples.scored,
            PSEUDO: out.pseudo_idx,
        }
        return FoldResult(
            samples.fold, samples.scored, out.logits, out.added, out.precision, st.seconds,
            list(getattr(self.cache, "hits", [])), out.state, roles, extra, out.by_round,
        )  # fmt: skip
