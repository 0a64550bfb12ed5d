"""The cached stages of one fold: pretraining, finetuning, self-training.

Each is a top-level function of its inputs and its own slices of the config. `STAGES`
describes them once: the config sections (or dotted keys) each one reads and the stage
upstream of it. From that table come the stage cache's keys (a stage's key holds every
value it reads plus its upstream stage's key) and the staged search's steps;
tests/test_stages.py checks that the sections a stage really reads are the ones its key
holds. A self-training round's retraining is keyed on what it trains on (`retrain_key`:
the pseudo-labels, not the thresholds that chose them). The vote and the decision stage
after it are not cached: they read `voting` and `decision` alone and cost milliseconds.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch

from mer_tune.data.layout import HOLDOUT, LABELLED, TEST, UNLABELLED, MERData
from mer_tune.method import train
from mer_tune.method.config import (
    Config,
    DataConfig,
    FinetuneConfig,
    ModelConfig,
    OversampleConfig,
    PretrainConfig,
)

EpochHook = Callable[[str, int, dict], None]


@dataclass(frozen=True)
class Stage:
    name: str
    reads: tuple[str, ...]  # config sections or dotted keys its output depends on
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
            6,
            False,
            "upstream",
        ),
        # eval: the fold split and the epoch-selection slice are made before it runs. The
        # heads' weights multiply their logits in the released classification loss.
        Stage(
            "finetune",
            ("eval", "oversample", "finetune", "self_training.confidence_weights"),
            "pretrain",
            5,
            True,
            "upstream",
        ),
        # Pseudo-labelling and retraining; each round's retraining is cached by
        # retrain_key, under this stage's name and version.
        Stage("pseudo", ("self_training",), "finetune", 7, True, "thresholds"),
    )
}
VOTE_READS = ("voting", "decision")  # the vote and the decision stage after it
VOTE_STEP = "voting"


def _overlap(read: str, key: str) -> bool:
    """Whether config key `key` (a dotted key or a whole section) and a stage's `read`
    name some value in common."""
    return read == key or key.startswith(read + ".") or read.startswith(key + ".")


def step_of(key: str) -> str:
    """The staged strategy's step that searches config key `key`: that of the first stage
    reading it (the vote's for voting weights)."""
    if key.split(".")[0] in VOTE_READS:
        return VOTE_STEP
    return next(s.step for s in STAGES.values() if any(_overlap(r, key) for r in s.reads))


def key_reads(stage: str) -> set[str]:
    """Every section or dotted key a stage's output depends on: its own and all upstream."""
    st = STAGES[stage]
    return set(st.reads) | (key_reads(st.upstream) if st.upstream else set())


def key_sections(stage: str) -> set[str]:
    """The top-level config sections of key_reads(stage)."""
    return {r.split(".")[0] for r in key_reads(stage)}


def shared_upto(searched: set[str]) -> str | None:
    """The last stage whose output no searched config key (or whole section) changes
    (None: even pretraining's does): every trial of a search shares it and all stages
    before it."""
    last = None
    for st in STAGES.values():
        if any(_overlap(r, k) for r in key_reads(st.name) for k in searched):
            break
        last = st.name
    return last


def _value_at(values: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        values = values[part]
    return values


def stage_keys(cfg: Config, fingerprint: str, fold: int) -> dict[str, dict]:
    """What each stage's output depends on: the data, the config values it reads and its
    upstream stage's key (and the fold, for fold-dependent stages)."""
    values = cfg.to_dict()
    keys: dict[str, dict] = {}
    for st in STAGES.values():
        key: dict[str, Any] = {"v": st.version} | {r: _value_at(values, r) for r in st.reads}
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


def fold_pool(data: MERData, data_cfg: DataConfig, samples: FoldSamples) -> np.ndarray:
    """The pool one fold model pseudo-labels: the unlabelled (`pools`), plus its scored
    samples where `samples.scored_in_pool` and the test names join the pool too. Data
    with no pool keeps none: a scored fold alone is not one to self-train on."""
    _, unl = pools(data, data_cfg)
    if samples.scored_in_pool and data_cfg.test_in_pool and len(samples.scored) and len(unl):
        return np.concatenate([unl, samples.scored])
    return unl


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


def _cpu(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in state.items()}


def _model(data: MERData, model_cfg: ModelConfig, seed: int, feats: train.Features, state=None):
    model = train.make_model(data, model_cfg, derive_seed(seed, "init"), feats.device)
    if state is not None:
        model.load_state_dict(state)
    return model


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
    # eval.inner_pool=transductive: the scored samples' features join the pool.
    scored_in_pool: bool = False


@dataclass(frozen=True)
class FoldRun:
    """What every fold-dependent stage of one fold model reads besides its config: the
    data, its features on the device, the fold's samples, the seed and the epoch hook."""

    data: MERData
    feats: train.Features
    samples: FoldSamples
    seed: int
    hook: EpochHook


def finetune_stage(
    run: FoldRun,
    pre_state: dict[str, torch.Tensor],
    data_cfg: DataConfig,
    model_cfg: ModelConfig,
    oversample_cfg: OversampleConfig,
    finetune_cfg: FinetuneConfig,
    steps: train.Steps,
) -> dict[str, Any]:
    """Oversample the fit samples, finetune from the pretrained weights, keep the best
    epoch on the selection samples; the heads' logits on the scored fold and the pool."""
    data, feats, samples = run.data, run.feats, run.samples
    rng = np.random.default_rng(derive_seed(run.seed, "oversample", samples.fold))
    over = oversample(samples.fit_y, oversample_cfg.target, len(data.classes), rng)
    train_idx, train_y = samples.fit[over], samples.fit_y[over]
    model = _model(data, model_cfg, run.seed, feats, pre_state)
    seed = derive_seed(run.seed, "finetune", samples.fold)
    state, info = train.supervised(
        model, feats, train_idx, train_y, samples.select, samples.select_y,
        train.Schedule(finetune_cfg.epochs, steps, seed, "finetune", run.hook),
    )  # fmt: skip
    unl = fold_pool(data, data_cfg, samples)
    logits = {"val": train.predict(model, feats, samples.scored)}
    logits["pool"] = train.predict(model, feats, unl)
    kept = {"state": _cpu(state), "best_epoch": info["best_epoch"]}
    return logits | kept | {"train_idx": train_idx, "train_y": train_y}


class Picked(NamedTuple):
    """The pseudo-labels of one round: pool positions and their classes."""

    keep: np.ndarray
    labels: np.ndarray


def retrain_key(
    up: dict, rnd: int, init: str, epochs: int, picked: Picked, names: np.ndarray, with_pool: bool
) -> dict:
    """What a round's retraining depends on: its upstream (the finetuning stage's key, or
    under init=finetuned the last round's key), where it starts, how long it trains, and
    the pseudo-labels it trains on (a digest of their names and classes), not the
    thresholds that chose them: threshold configs that keep the same samples share it."""
    digest = hashlib.sha256()
    digest.update("\n".join(map(str, names[picked.keep])).encode())
    digest.update(np.ascontiguousarray(picked.labels, dtype=np.int64).tobytes())
    key = {"v": STAGES["pseudo"].version, "up": up, "round": rnd, "init": init}
    return key | {"epochs": epochs, "set": digest.hexdigest(), "pool": with_pool}


class Round(NamedTuple):
    """One self-training round's schedule."""

    number: int
    epochs: int
    steps: train.Steps
    with_pool: bool  # another round follows: its model also labels the pool


def retrain_stage(
    run: FoldRun,
    start: dict[str, torch.Tensor],
    fine: dict[str, Any],
    picked: Picked,
    data_cfg: DataConfig,
    model_cfg: ModelConfig,
    rnd: Round,
) -> dict[str, Any]:
    """One self-training round: a model from the weights `start` (the pretrained ones, as
    the paper's step 2 trains MR-CCL anew; or the finetuned / last round's) trained on the
    oversampled labelled fit samples plus the pool samples `picked`, its best epoch picked
    on the selection samples. Its heads' logits on the scored fold, and on the pool when
    another round follows."""
    data, feats, samples = run.data, run.feats, run.samples
    unl = fold_pool(data, data_cfg, samples)
    model = _model(data, model_cfg, run.seed, feats, start)
    seed = derive_seed(run.seed, "retrain", samples.fold, rnd.number)
    state, _ = train.supervised(
        model, feats,
        np.concatenate([fine["train_idx"], unl[picked.keep]]),
        np.concatenate([fine["train_y"], picked.labels]),
        samples.select, samples.select_y,
        train.Schedule(rnd.epochs, rnd.steps, seed, "retrain", run.hook),
    )  # fmt: skip
    out = {"val": train.predict(model, feats, samples.scored), "state": _cpu(state)}
    if rnd.with_pool:
        out["pool"] = train.predict(model, feats, unl)
    return out
