"""The cached stages of one fold: pretraining, finetuning, self-training.

Each is a top-level function of its inputs and its own slices of the config. `STAGES`
describes them once: the config sections each one reads and the stage upstream of it.
From that table come the stage cache's keys (a stage's key holds every section it reads
plus its upstream stage's key) and the staged search's steps; tests/test_stages.py checks
that the sections a stage really reads are the ones its key holds. The vote and the
decision stage after it are not cached: they read `voting` and `decision` alone and cost
milliseconds.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from mer_tune.data.layout import HOLDOUT, LABELLED, TEST, UNLABELLED, MERData
from mer_tune.method import train
from mer_tune.method.config import (
    HEADS,
    Config,
    DataConfig,
    FinetuneConfig,
    ModelConfig,
    OversampleConfig,
    PretrainConfig,
    SelfTrainingConfig,
)

EpochHook = Callable[[str, int, dict], None]


@dataclass(frozen=True)
class Stage:
    name: str
    reads: tuple[str, ...]  # top-level config sections its output depends on
    upstream: str | None
    version: int  # bump when the code changes what the stage computes
    fold_dependent: bool  # its output differs per fold (its key holds the fold)
    # The staged strategy's step that searches this stage's knobs: everything up to
    # finetuning reruns all downstream, so those are searched together, first.
    step: str


STAGES = {
    s.name: s
    for s in (
        Stage(
            "pretrain",
            ("data", "model", "pretrain", "noise", "loss", "optim", "seed"),
            None,
            5,
            False,
            "upstream",
        ),
        # eval: the fold split and the epoch-selection slice are made before it runs.
        Stage("finetune", ("eval", "oversample", "finetune"), "pretrain", 4, True, "upstream"),
        Stage("pseudo", ("self_training",), "finetune", 6, True, "thresholds"),
    )
}
VOTE_READS = ("voting", "decision")  # the vote and the decision stage after it
VOTE_STEP = "voting"


def step_of(key: str) -> str:
    """The staged strategy's step that searches config key `key`: that of the stage
    reading its section (the vote's for voting weights)."""
    section = key.split(".")[0]
    if section in VOTE_READS:
        return VOTE_STEP
    return next(s.step for s in STAGES.values() if section in s.reads)


def key_sections(stage: str) -> set[str]:
    """Every config section a stage's output depends on: its own and all upstream."""
    st = STAGES[stage]
    return set(st.reads) | (key_sections(st.upstream) if st.upstream else set())


def shared_upto(searched: set[str]) -> str | None:
    """The last stage whose output no searched config section changes (None: even
    pretraining's does): every trial of a search shares it and all stages before it."""
    last = None
    for st in STAGES.values():
        if key_sections(st.name) & searched:
            break
        last = st.name
    return last


def stage_keys(cfg: Config, fingerprint: str, fold: int) -> dict[str, dict]:
    """What each stage's output depends on: the data, its config sections and its
    upstream stage's key (and the fold, for fold-dependent stages)."""
    values = cfg.to_dict()
    keys: dict[str, dict] = {}
    for st in STAGES.values():
        key: dict[str, Any] = {"v": st.version} | {s: values[s] for s in st.reads}
        key |= {"up": keys[st.upstream]} if st.upstream else {"data": fingerprint}
        if st.fold_dependent:
            key["fold"] = fold
        keys[st.name] = key
    return keys


def derive_seed(seed: int, *parts: object) -> int:
    """A stable per-stage seed: the same stage of the same config always draws the same
    (crc32, not hash(), which Python salts per process)."""
    words = [seed] + [zlib.crc32(str(p).encode()) for p in parts]
    return int(np.random.SeedSequence(words).generate_state(1)[0])


def pools(data: MERData, data_cfg: DataConfig) -> tuple[np.ndarray, np.ndarray]:
    """(pretraining pool: all features allowed; pseudo-labelling pool: the unlabelled).
    Test names and a search's outer holdout join the pool (features only, never labels)
    when `data.test_in_pool` is on, as the challenge allows for test names."""
    pool_splits = [UNLABELLED] + ([TEST, HOLDOUT] if data_cfg.test_in_pool else [])
    unl = np.flatnonzero(np.isin(data.split, pool_splits))
    return np.sort(np.concatenate([data.indices(LABELLED), unl])), unl


def oversample(
    labels: np.ndarray, target: int, n_classes: int, rng: np.random.Generator
) -> np.ndarray:
    """Positions into `labels`: every sample once, plus random repeats of each class up to
    `target` samples (classes already above it are left alone; 0 = off)."""
    keep = [np.arange(len(labels))]
    if target > 0:
        for c in range(n_classes):
            members = np.flatnonzero(labels == c)
            if 0 < len(members) < target:
                keep.append(rng.choice(members, size=target - len(members), replace=True))
    return np.concatenate(keep)


def select_pseudo_labels(
    probs: np.ndarray, thresholds: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Keep a sample when its top probability reaches the threshold of its predicted class.
    Returns (positions kept, their labels)."""
    pred = probs.argmax(axis=1)
    keep = probs.max(axis=1) >= thresholds[pred]
    return np.flatnonzero(keep), pred[keep]


def confidence(logits: dict[str, np.ndarray], st_cfg: SelfTrainingConfig) -> np.ndarray:
    """Class probabilities (N, C) whose top value is a pool sample's confidence.
    equal_probs: the mean of the heads' probabilities; weighted_probs: their weighted
    mean; weighted_logits: the softmax of the weighted sum of the heads' logits, not
    divided by the weights' total, as the released model outputs (much sharper: four
    heads at 0.95 give 0.95 under equal_probs and about 0.9997 here)."""
    if st_cfg.confidence == "equal_probs":
        return vote(logits, {h: 1.0 for h in HEADS})
    weights = st_cfg.confidence_weights
    if st_cfg.confidence == "weighted_probs":
        return vote(logits, weights)
    return train._softmax(sum(weights.get(h, 0.0) * logits[h] for h in HEADS))


def vote(
    logits: dict[str, np.ndarray], weights: dict[str, float], mode: str = "probs"
) -> np.ndarray:
    """Weighted soft voting of the heads; returns class probabilities (N, C).
    probs: sum of weighted per-head probabilities (the paper); logits: softmax of the
    weighted sum of logits (the released code)."""
    total = sum(weights.get(h, 0.0) for h in HEADS)
    if mode == "logits":
        return train._softmax(sum(weights.get(h, 0.0) * logits[h] for h in HEADS) / total)
    return sum(weights.get(h, 0.0) * train._softmax(logits[h]) for h in HEADS) / total


def decide(probs: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """The decision stage after the vote: per-class additive offsets on the log of the
    vote's probabilities, renormalised (all zero: the vote itself, untouched). It reads
    no trained weights, so a search of it reuses every cached stage."""
    if not np.any(offsets):
        return probs
    return train._softmax(np.log(np.clip(probs, 1e-12, None)) + offsets)


def _cpu(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in state.items()}


def _model(data: MERData, model_cfg: ModelConfig, seed: int, feats: train.Features, state=None):
    model = train.make_model(data, model_cfg, derive_seed(seed, "init"), feats.device)
    if state is not None:
        model.load_state_dict(state)
    return model


# ---------------------------------------------------------------- the stages


def pretrain_stage(
    data: MERData,
    feats: train.Features,
    data_cfg: DataConfig,
    model_cfg: ModelConfig,
    pretrain_cfg: PretrainConfig,
    steps: train.Steps,
    seed: int,
    hook: EpochHook,
) -> dict[str, torch.Tensor]:
    """Contrastive pretraining on every allowed feature (no labels): fold-independent."""
    model = _model(data, model_cfg, seed, feats)
    if pretrain_cfg.enabled and pretrain_cfg.epochs:
        pool, _ = pools(data, data_cfg)
        train.pretrain(model, feats, pool, pretrain_cfg, steps, derive_seed(seed, "pretrain"), hook)
    return _cpu(model.state_dict())


@dataclass(frozen=True)
class FoldSamples:
    """Data indices of one fold: what it fits on (labelled, before oversampling), what
    picks its epochs, what it is scored on (may be empty)."""

    fold: int
    fit: np.ndarray
    fit_y: np.ndarray
    select: np.ndarray
    select_y: np.ndarray
    scored: np.ndarray


def finetune_stage(
    data: MERData,
    feats: train.Features,
    pre_state: dict[str, torch.Tensor],
    samples: FoldSamples,
    data_cfg: DataConfig,
    model_cfg: ModelConfig,
    oversample_cfg: OversampleConfig,
    finetune_cfg: FinetuneConfig,
    steps: train.Steps,
    seed: int,
    hook: EpochHook,
) -> dict[str, Any]:
    """Oversample the fit samples, finetune from the pretrained weights, keep the best
    epoch on the selection samples; the heads' logits on the scored fold and the pool."""
    rng = np.random.default_rng(derive_seed(seed, "oversample", samples.fold))
    over = oversample(samples.fit_y, oversample_cfg.target, len(data.classes), rng)
    train_idx, train_y = samples.fit[over], samples.fit_y[over]
    model = _model(data, model_cfg, seed, feats, pre_state)
    state, info = train.supervised(
        model,
        feats,
        train_idx,
        train_y,
        samples.select,
        samples.select_y,
        finetune_cfg.epochs,
        steps,
        derive_seed(seed, "finetune", samples.fold),
        "finetune",
        hook,
    )
    _, unl = pools(data, data_cfg)
    return {
        "val": train.predict(model, feats, samples.scored),
        "pool": train.predict(model, feats, unl),
        "state": _cpu(state),
        "best_epoch": info["best_epoch"],
        "train_idx": train_idx,
        "train_y": train_y,
    }


def self_training_stage(
    data: MERData,
    feats: train.Features,
    pre_state: dict[str, torch.Tensor],
    fine: dict[str, Any],
    samples: FoldSamples,
    data_cfg: DataConfig,
    model_cfg: ModelConfig,
    st_cfg: SelfTrainingConfig,
    thresholds: np.ndarray,
    steps: train.Steps,
    seed: int,
    hook: EpochHook,
) -> dict[str, Any]:
    """Rounds of pseudo-labelling the pool (by self_training.confidence, which never
    reads the searched voting weights) and retraining on labelled + kept
    samples, each round warm-started from the last (the first from the finetuned
    weights), its best epoch picked on the selection samples."""
    _, unl = pools(data, data_cfg)
    logits_val, logits_pool, state = fine["val"], fine["pool"], fine["state"]
    keep = labels = np.zeros(0, dtype=np.int64)
    per_round = []  # pseudo-labels per class that each round trained on
    for rnd in range(st_cfg.rounds):
        # Every round labels the whole pool afresh, with the latest model's predictions.
        keep, labels = select_pseudo_labels(confidence(logits_pool, st_cfg), thresholds)
        per_round.append(np.bincount(labels, minlength=len(data.classes)))
        if len(keep) == 0:
            break
        model = _model(data, model_cfg, seed, feats, state)
        idx = np.concatenate([fine["train_idx"], unl[keep]])
        ys = np.concatenate([fine["train_y"], labels])
        state, _ = train.supervised(
            model,
            feats,
            idx,
            ys,
            samples.select,
            samples.select_y,
            st_cfg.epochs,
            steps,
            derive_seed(seed, "retrain", samples.fold, rnd),
            "retrain",
            hook,
        )
        logits_val = train.predict(model, feats, samples.scored)
        if rnd + 1 < st_cfg.rounds:
            logits_pool = train.predict(model, feats, unl)
    return {
        "val": logits_val,
        "keep": keep,
        "labels": labels,
        "state": _cpu(state),
        "per_round": np.asarray(per_round, dtype=np.int64).reshape(-1, len(data.classes)),
    }
