"""Training loops of the MR-CCL model: contrastive pretraining, supervised (re)training
that keeps the epoch scoring best on the selection samples it is given (an inner slice, or
the scored fold under eval.select_on=scored), and batched inference."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import f1_score

from mer_tune.data.layout import MODALITIES, MERData
from mer_tune.errors import MerTuneError
from mer_tune.method.config import (
    HEADS,
    Config,
    LossConfig,
    ModelConfig,
    NoiseConfig,
    OptimConfig,
    PretrainConfig,
)
from mer_tune.method.losses import add_noise
from mer_tune.method.malloc import inference_malloc
from mer_tune.method.model import MRCCL, Encoded
from mer_tune.method.steps import Stepper, autocast

EpochHook = Callable[[str, int, dict], None]


class DivergedError(MerTuneError):
    """The loss became NaN or inf: the trial stops early instead of training on garbage."""


class Features:
    """Standardised feature batches as float32 tensors on the target device.

    On a GPU the whole feature set is uploaded once (as stored, float16 or float32) and
    batches are gathered there; on the CPU batches are gathered from the memory map.
    `arrays`: the feature set already on the device (one copy shared by several trials),
    read and never written."""

    def __init__(
        self, data: MERData, device: torch.device, arrays: dict[str, torch.Tensor] | None = None
    ):
        self.device = device
        self.mean = {m: torch.as_tensor(data.mean[m], device=device) for m in MODALITIES}
        self.std = {m: torch.as_tensor(data.std[m], device=device) for m in MODALITIES}
        self.on_device = device.type != "cpu"
        if arrays is not None:
            self.arrays = arrays
        elif self.on_device:
            self.arrays = {
                m: torch.as_tensor(np.asarray(data.features[m]), device=device) for m in MODALITIES
            }
        else:
            self.arrays = data.features

    def batch(self, idx: np.ndarray | torch.Tensor) -> dict[str, torch.Tensor]:
        """Standardised float32 features of the samples `idx` (on the GPU, `idx` may be a
        device tensor: no host round trip)."""
        if self.on_device:
            tidx = torch.as_tensor(idx, device=self.device)
            raw = {m: self.arrays[m][tidx] for m in MODALITIES}
        else:
            idx = idx.numpy() if isinstance(idx, torch.Tensor) else idx
            raw = {m: torch.from_numpy(np.asarray(self.arrays[m][idx])) for m in MODALITIES}
        # In place on the float32 copy: a 4096-sample inference batch is ~110 MB per
        # temporary at full scale. raw is a gathered copy, never the stored features.
        return {m: raw[m].float().sub_(self.mean[m]).div_(self.std[m]) for m in MODALITIES}

    def stats(self, modality: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, std) that standardise the modality: what maps a batch back to raw."""
        return self.mean[modality], self.std[modality]


@dataclass(frozen=True)
class Steps:
    """How every training stage takes its steps: the optimiser, the contrastive loss and
    the noise of its second view. The one slice of the config all training shares."""

    optim: OptimConfig
    loss: LossConfig
    noise: NoiseConfig
    # Each head's logit multiplier under loss.supervised=released (None: contrastive only).
    head_weights: dict[str, float] | None = None

    @classmethod
    def of(cls, cfg: Config, supervised: bool = True) -> Steps:
        """The steps of a supervised stage (with the heads' weights, which live in
        self_training.confidence_weights: one place for the weights the heads are trained
        and pseudo-labels are chosen with), or of contrastive pretraining."""
        weights = dict(cfg.self_training.confidence_weights) if supervised else None
        return cls(cfg.optim, cfg.loss, cfg.noise, weights)


def make_model(data: MERData, model_cfg: ModelConfig, seed: int, device: torch.device) -> MRCCL:
    torch.manual_seed(seed)
    return MRCCL(data.dims, len(data.classes), model_cfg).to(device)


def _batches(n: int, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    order = rng.permutation(n)
    out = [np.sort(order[i : i + batch_size]) for i in range(0, n, batch_size)]
    # BatchNorm needs two samples: fold a last singleton into the previous batch.
    if len(out) > 1 and len(out[-1]) < 2:
        out[-2] = np.concatenate([out[-2], out.pop()])
    return out


def _check(loss_sum: torch.Tensor, stage: str, epoch: int) -> float:
    """The epoch's summed loss as a float; raises when a step's loss was NaN or inf."""
    value = loss_sum.item()
    if not np.isfinite(value):
        raise DivergedError(
            f"{stage}: the loss became {value} in epoch {epoch}; this config diverges "
            "(a lower optim.lr usually helps)"
        )
    return value


def _noise_generator(device: torch.device, seed: int) -> torch.Generator | None:
    """The CPU draws from its own seeded generator; a GPU from its default one, the
    generator a CUDA graph can capture, seeded here so each stage draws its own noise
    and dropout masks."""
    if device.type == "cuda":
        torch.cuda.manual_seed(seed)
        return None
    return torch.Generator().manual_seed(seed)


def pretrain(
    model: MRCCL,
    feats: Features,
    idx: np.ndarray,
    pretrain_cfg: PretrainConfig,
    steps: Steps,
    seed: int,
    on_epoch: EpochHook | None = None,
) -> dict[str, torch.Tensor]:
    """Contrastive pretraining (no labels) over the samples `idx`."""
    rng = np.random.default_rng(seed)
    gen = _noise_generator(feats.device, seed)

    def loss_fn(x: dict[str, torch.Tensor], _y: torch.Tensor | None, ids: torch.Tensor):
        return _contrastive_loss(model, x, ids, steps, feats, gen, noise=True)

    with Stepper(model, feats.batch, loss_fn, steps.optim, feats.device) as stepper:
        for epoch in range(pretrain_cfg.epochs):
            pool = idx
            if pretrain_cfg.max_samples and len(idx) > pretrain_cfg.max_samples:
                pool = rng.choice(idx, size=pretrain_cfg.max_samples, replace=False)
            batches = _batches(len(pool), steps.optim.batch_size, rng)
            total, _ = stepper.epoch([pool[b] for b in batches])
            mean_loss = _check(total, "pretrain", epoch) / max(len(pool), 1)
            if on_epoch:
                on_epoch("pretrain", epoch, {"pretrain_loss": mean_loss})
    return copy.deepcopy(model.state_dict())


def _contrastive_loss(
    model: MRCCL,
    x: dict[str, torch.Tensor],
    ids: torch.Tensor,
    steps: Steps,
    feats: Features,
    gen: torch.Generator | None,
    noise: bool,
    encoded: Encoded | None = None,
) -> torch.Tensor:
    """The contrastive terms of a batch; `noise` adds the clean-vs-noised ones, `ids`
    (the batch's sample indices) keeps duplicates from being each other's negatives."""
    enc = encoded or model.encode(x, invariant=model.reads_invariant(steps.loss))
    noisy = None
    if noise and steps.noise.kind != "none" and steps.loss.nee_weight > 0:
        noisy = model.embed(
            {m: add_noise(x[m], m, steps.noise, gen, feats.stats(m)) for m in MODALITIES}
        )
    return model.contrastive(enc, noisy, steps.loss, ids)


def equal_vote_f1(logits: dict[str, np.ndarray], y: np.ndarray) -> float:
    """Model selection score: an equal-weight soft vote of the four heads. It does not use
    the searched voting weights, so the trained heads never depend on them."""
    probs = sum(_softmax(logits[h]) for h in HEADS)
    return float(f1_score(y, probs.argmax(1), average="weighted"))


def equal_vote_min_class_f1(logits: dict[str, np.ndarray], y: np.ndarray) -> float:
    """The worst class's F1 under the same equal-weight vote (classes present in y)."""
    probs = sum(_softmax(logits[h]) for h in HEADS)
    return float(f1_score(y, probs.argmax(1), labels=np.unique(y), average=None).min())


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def supervised_loss(
    model: MRCCL, feats: Features, steps: Steps, gen: torch.Generator | None
) -> Callable[[dict[str, torch.Tensor], torch.Tensor, torch.Tensor], torch.Tensor]:
    """The loss of a (re)training step, as Stepper calls it with a batch's features, its
    labels and its sample indices: the classification loss (loss.supervised) plus the
    contrastive terms (with the noised views where loss.finetune_noise says)."""
    contrastive_on = steps.loss.finetune_contrastive > 0

    def loss_fn(x: dict[str, torch.Tensor], y: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        # The invariant codes only where a contrastive term reads them.
        encoded = model.encode(x, invariant=contrastive_on and model.reads_invariant(steps.loss))
        loss = classification_loss(model.logits(encoded.specific), y, steps)
        if contrastive_on:
            contrastive = _contrastive_loss(
                model, x, ids, steps, feats, gen, steps.loss.finetune_noise, encoded
            )
            loss = loss + steps.loss.finetune_contrastive * contrastive
        return loss

    return loss_fn


def classification_loss(
    logits: dict[str, torch.Tensor], y: torch.Tensor, steps: Steps
) -> torch.Tensor:
    """released: each head's logits times its weight; cross-entropy on their sum (the
    vote's logits, as MERTools trains `emos_out`) plus the mean cross-entropy of the
    weighted heads (the released model's own term). mean_heads: the mean cross-entropy of
    the unweighted heads."""
    if steps.loss.supervised == "mean_heads":
        return sum(F.cross_entropy(logits[h].float(), y) for h in HEADS) / len(HEADS)
    if steps.head_weights is None:
        raise ValueError("loss.supervised=released needs the heads' weights (Steps.of(cfg))")
    weighted = [steps.head_weights.get(h, 0.0) * logits[h].float() for h in HEADS]
    heads = sum(F.cross_entropy(w, y) for w in weighted) / len(HEADS)
    return F.cross_entropy(sum(weighted), y) + heads


class Schedule(NamedTuple):
    """How a supervised stage trains: its epochs, steps and seed, and its name and
    epoch hook for progress reports."""

    epochs: int
    steps: Steps
    seed: int
    stage: str
    on_epoch: EpochHook | None = None


def supervised(
    model: MRCCL,
    feats: Features,
    train_idx: np.ndarray,
    train_y: np.ndarray,
    val_idx: np.ndarray,
    val_y: np.ndarray,
    schedule: Schedule,
) -> tuple[dict[str, torch.Tensor], dict]:
    """The classification loss plus the contrastive terms; keep the epoch that
    scores best on the samples `val_idx` (the selection samples: they pick, never train).
    Returns (best state, {best_epoch, best_f1, history})."""
    epochs, steps, seed, stage, on_epoch = schedule
    rng = np.random.default_rng(seed)
    loss_fn = supervised_loss(model, feats, steps, _noise_generator(feats.device, seed))
    targets = torch.as_tensor(train_y, device=feats.device)
    best_state, best = copy.deepcopy(model.state_dict()), {"best_epoch": -1, "best_f1": -1.0}
    history = []
    with Stepper(model, feats.batch, loss_fn, steps.optim, feats.device, targets) as stepper:
        for epoch in range(epochs):
            batches = _batches(len(train_idx), steps.optim.batch_size, rng)
            total, last = stepper.epoch([train_idx[b] for b in batches], batches)
            _check(total, stage, epoch)
            logits = predict(model, feats, val_idx)
            score = equal_vote_f1(logits, val_y)
            history.append(score)
            if score > best["best_f1"]:
                best = {"best_epoch": epoch, "best_f1": score}
                best_state = copy.deepcopy(model.state_dict())
            if on_epoch:
                metrics = {"val_f1": score, "best_val_f1": best["best_f1"]}
                metrics["val_min_class_f1"] = equal_vote_min_class_f1(logits, val_y)
                on_epoch(stage, epoch, metrics | {"train_loss": last.item()})
    model.load_state_dict(best_state)
    return best_state, best | {"history": history}


@torch.no_grad()
def predict(
    model: MRCCL, feats: Features, idx: np.ndarray, batch_size: int = 4096
) -> dict[str, np.ndarray]:
    """Logits of the four heads, (len(idx), C) float32 each."""
    model.eval()
    parts: dict[str, list[np.ndarray]] = {h: [] for h in HEADS}
    with inference_malloc():
        for start in range(0, len(idx), batch_size):
            x = feats.batch(np.asarray(idx[start : start + batch_size]))
            with autocast(feats.device):
                out = model.logits(model.embed(x))
            for h in HEADS:
                parts[h].append(out[h].float().cpu().numpy())
    n_cls = model.heads["fusion"][-1].out_features
    return {
        h: np.concatenate(parts[h]) if parts[h] else np.zeros((0, n_cls), np.float32) for h in HEADS
    }
