"""Training loops of the MR-CCL model: contrastive pretraining, supervised (re)training
with best-epoch selection on the validation fold, and batched inference."""

from __future__ import annotations

import contextlib
import copy
import ctypes
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import f1_score

from .config import HEADS, MODALITIES, Config
from .data import MERData
from .model import MRCCL, add_noise

EpochHook = Callable[[str, int, dict], None]


def _fixed_mmap_threshold(nbytes: int = 1 << 20) -> None:
    """Serve every allocation above 1 MiB with its own mmap, returned to the OS on free.
    glibc otherwise raises its mmap threshold after the first large frees, and the
    feature batches (MBs each, every step) then fragment the heap: measured at full scale,
    private memory after one pass over the pool fell from 1.6 GiB to 0.4 GiB."""
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to tune
        ctypes.CDLL("libc.so.6").mallopt(-3, nbytes)  # M_MMAP_THRESHOLD


_fixed_mmap_threshold()


class DivergedError(RuntimeError):
    """The loss became NaN or inf: the trial stops early instead of training on garbage."""


class Features:
    """Standardised feature batches as float32 tensors on the target device.

    On a GPU the whole feature set is uploaded once (as stored, float16 or float32) and
    batches are gathered there; on the CPU batches are gathered from the memory map."""

    def __init__(self, data: MERData, device: torch.device):
        self.device = device
        self.mean = {m: torch.as_tensor(data.mean[m], device=device) for m in MODALITIES}
        self.std = {m: torch.as_tensor(data.std[m], device=device) for m in MODALITIES}
        self.on_device = device.type != "cpu"
        if self.on_device:
            self.arrays = {
                m: torch.as_tensor(np.asarray(data.features[m]), device=device) for m in MODALITIES
            }
        else:
            self.arrays = data.features

    def batch(self, idx: np.ndarray) -> dict[str, torch.Tensor]:
        if self.on_device:
            tidx = torch.as_tensor(idx, device=self.device)
            raw = {m: self.arrays[m][tidx] for m in MODALITIES}
        else:
            raw = {m: torch.from_numpy(np.asarray(self.arrays[m][idx])) for m in MODALITIES}
        return {m: (raw[m].float() - self.mean[m]) / self.std[m] for m in MODALITIES}


def make_model(data: MERData, cfg: Config, seed: int, device: torch.device) -> MRCCL:
    torch.manual_seed(seed)
    return MRCCL(data.dims, len(data.classes), cfg.model).to(device)


def _batches(n: int, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    order = rng.permutation(n)
    out = [np.sort(order[i : i + batch_size]) for i in range(0, n, batch_size)]
    # BatchNorm needs two samples: fold a last singleton into the previous batch.
    if len(out) > 1 and len(out[-1]) < 2:
        out[-2] = np.concatenate([out[-2], out.pop()])
    return out


def _check(loss: torch.Tensor, stage: str, epoch: int) -> None:
    if not torch.isfinite(loss):
        raise DivergedError(f"{stage}: loss became {loss.item()} at epoch {epoch}")


def _autocast(device: torch.device):
    # bf16 autocast on a GPU; full precision on the CPU (where it brings no speed here).
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def pretrain(
    model: MRCCL,
    feats: Features,
    idx: np.ndarray,
    cfg: Config,
    seed: int,
    on_epoch: EpochHook | None = None,
) -> dict[str, torch.Tensor]:
    """Contrastive pretraining (no labels) over the samples `idx`."""
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    model.train()
    for epoch in range(cfg.pretrain.epochs):
        pool = idx
        if cfg.pretrain.max_samples and len(idx) > cfg.pretrain.max_samples:
            pool = rng.choice(idx, size=cfg.pretrain.max_samples, replace=False)
        total, count = 0.0, 0
        for b in _batches(len(pool), cfg.optim.batch_size, rng):
            x = feats.batch(pool[b])
            with _autocast(feats.device):
                loss = _contrastive_loss(model, x, cfg, gen)
            _check(loss, "pretrain", epoch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total, count = total + loss.item() * len(b), count + len(b)
        if on_epoch:
            on_epoch("pretrain", epoch, {"pretrain_loss": total / max(count, 1)})
    return copy.deepcopy(model.state_dict())


def _contrastive_loss(
    model: MRCCL, x: dict[str, torch.Tensor], cfg: Config, gen: torch.Generator
) -> torch.Tensor:
    emb = model.embed(x)
    noisy = None
    if cfg.noise.kind != "none" and cfg.loss.nee_weight > 0:
        noisy = model.embed({m: add_noise(x[m], m, cfg.noise, gen) for m in MODALITIES})
    return model.contrastive(emb, noisy, cfg.loss)


def equal_vote_f1(logits: dict[str, np.ndarray], y: np.ndarray) -> float:
    """Model selection score: an equal-weight soft vote of the four heads. It does not use
    the searched voting weights, so the trained heads never depend on them."""
    probs = sum(_softmax(logits[h]) for h in HEADS)
    return float(f1_score(y, probs.argmax(1), average="weighted"))


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def supervised(
    model: MRCCL,
    feats: Features,
    train_idx: np.ndarray,
    train_y: np.ndarray,
    val_idx: np.ndarray,
    val_y: np.ndarray,
    epochs: int,
    cfg: Config,
    seed: int,
    stage: str,
    on_epoch: EpochHook | None = None,
) -> tuple[dict[str, torch.Tensor], dict]:
    """Cross-entropy on the four heads plus the contrastive terms; keep the best epoch
    on the validation fold. Returns (best state, {best_epoch, best_f1, history})."""
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    targets = torch.as_tensor(train_y, device=feats.device)
    best_state, best = copy.deepcopy(model.state_dict()), {"best_epoch": -1, "best_f1": -1.0}
    history = []
    for epoch in range(epochs):
        model.train()
        for b in _batches(len(train_idx), cfg.optim.batch_size, rng):
            x = feats.batch(train_idx[b])
            with _autocast(feats.device):
                emb = model.embed(x)
                logits = model.logits(emb)
                y = targets[torch.as_tensor(b, device=feats.device)]
                loss = sum(F.cross_entropy(logits[h].float(), y) for h in HEADS) / len(HEADS)
                if cfg.loss.finetune_contrastive > 0:
                    loss = loss + cfg.loss.finetune_contrastive * _contrastive_loss(
                        model, x, cfg, gen
                    )
            _check(loss, stage, epoch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        score = equal_vote_f1(predict(model, feats, val_idx), val_y)
        history.append(score)
        if score > best["best_f1"]:
            best = {"best_epoch": epoch, "best_f1": score}
            best_state = copy.deepcopy(model.state_dict())
        if on_epoch:
            on_epoch(
                stage,
                epoch,
                {"val_f1": score, "best_val_f1": best["best_f1"], "train_loss": loss.item()},
            )
    model.load_state_dict(best_state)
    return best_state, best | {"history": history}


@torch.no_grad()
def predict(
    model: MRCCL, feats: Features, idx: np.ndarray, batch_size: int = 4096
) -> dict[str, np.ndarray]:
    """Logits of the four heads, (len(idx), C) float32 each."""
    model.eval()
    parts: dict[str, list[np.ndarray]] = {h: [] for h in HEADS}
    for start in range(0, len(idx), batch_size):
        x = feats.batch(np.asarray(idx[start : start + batch_size]))
        with _autocast(feats.device):
            out = model.logits(model.embed(x))
        for h in HEADS:
            parts[h].append(out[h].float().cpu().numpy())
    n_cls = model.heads["fusion"][-1].out_features
    return {
        h: np.concatenate(parts[h]) if parts[h] else np.zeros((0, n_cls), np.float32) for h in HEADS
    }
