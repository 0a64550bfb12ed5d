"""How much GPU memory one trial needs, so that fractional GPUs (`--gpus-per-trial 0.25`)
pack several trials on a card without running it out of memory.

A trial on a GPU holds: the whole feature set (uploaded once, as stored), the model with
its gradients, Adam's two moments and a best-epoch copy, the batches in flight (raw and
standardised features, noisy views, activations), the CUDA graph of the stage being
trained, PyTorch's allocator cache and the CUDA context. The estimate is an upper bound
on what the card shows for the trial; Ray's GPU fractions only count, they do not limit
memory.

Calibration (benchmarks/RESULTS.md, H100, full MER2024-SEMI scale, default config): the
card showed 3.43 GiB for one trial: 1.55 GiB of features, 0.79 GiB more allocated by
PyTorch at the peak, 0.56 GiB more held in its allocator cache, 0.53 GiB of context.
The batch sizes explain 0.17 GiB of the 0.79; RUNTIME covers the rest with a margin.
Measured on the CPU (benchmarks/step_memory.py, float32, the peak of a step's live
tensors at batches of 256 to 4,096): a sample's activations take about 100 KB at hidden
128, and a step holds NT-Xent similarity arrays, n x n float32 each for a batch of n
(float32 under autocast too), how many depends on the path the loss takes (see
SIMILARITY_ARRAYS). Negligible at the default batch of 256 (7 MiB on the fused step's
shared blocks), they are most of a step's memory at 4,096 (1.7 GiB).

The estimate is taken at the largest sizes a search space can draw (largest_config), so
that a space searching `model.hidden` or `optim.batch_size` is packed for its largest
trial, not its base config.
"""

from __future__ import annotations

from typing import Any

import torch

from mer_tune.errors import MerTuneError, UsageError
from mer_tune.method.config import Config
from mer_tune.method.losses import MAX_SHIFTED_SPREAD, fused_kernels
from mer_tune.method.model import MRCCL

CUDA_CONTEXT = 640 * 2**20  # CUDA context and cuBLAS workspaces, per process (0.53 GiB seen)
RUNTIME = 1280 * 2**20  # graph pools, allocator cache, gathers (1.18 GiB seen beyond batches)
INFERENCE_BATCH = 4096  # train.predict's batch size
# n x n float32 arrays at a step's peak, by the path the NT-Xent terms take, with a
# margin over what benchmarks/step_memory.py measured: the fused step's shared blocks
# (one fixed temperature) 27, its row-wise path (learned temperatures, or one below
# 2 / MAX_SHIFTED_SPREAD) 49, the general path (MER_TUNE_FUSED=0) 53, and about 95 with
# learned temperatures; the invariant codes' NT-Xent (loss.invariant: ntxent) adds
# about 4 more, within the margin.
SIMILARITY_ARRAYS = {"blocks": 36, "rows": 64, "general": 128}
# The searched keys that decide a trial's memory, and which of their values needs the
# most: the model's width and depth, the batch, a learned or the smallest temperature.
MOST_MEMORY = {
    "model.hidden": max,
    "model.layers": max,
    "optim.batch_size": max,
    "loss.learn_temperature": max,  # True over False
    "loss.temperature": min,
}


def contrastive_path(cfg: Config) -> str:
    """Which NT-Xent path a trial of `cfg` trains with (model.nt_xent_terms). The driver
    reads MER_TUNE_FUSED from its own environment: a cluster whose nodes set it otherwise
    needs the driver to set it alike."""
    if not fused_kernels():
        return "general"
    if cfg.loss.learn_temperature or 2 / cfg.loss.temperature > MAX_SHIFTED_SPREAD:
        return "rows"
    return "blocks"


def largest_config(base: Config, params: dict[str, Any]) -> Config:
    """The config of the space's most memory-hungry trial: every searched size at its
    largest, and the NT-Xent path that holds the most arrays when the space can take it.
    Each value is compared as the config validates it (a choice "1024" is 1024); a key
    whose values do not validate keeps the base value (the search itself then names it)."""
    # Imported here: spaces.py imports Optuna, which the card benchmarks that use this
    # module's estimate (benchmarks/gpu_trial.py) do without on a bare GPU machine.
    from mer_tune.hpo.spaces import trial_config, value_at

    cfg = base
    for key, dist in params.items():
        pick = MOST_MEMORY.get(key)
        if pick is None:
            continue
        choices = list(getattr(dist, "choices", None) or (dist.low, dist.high))
        valid = []
        for value in choices:
            try:
                candidate = trial_config(cfg, {key: value})
            except MerTuneError:
                continue
            valid.append((value_at(candidate, key), candidate))
        if valid:
            cfg = pick(valid, key=lambda pair: pair[0])[1]
    return cfg


def step_terms(dims: dict[str, int], classes: int, cfg: Config) -> tuple[int, int]:
    """The estimate's bytes for the model (weights, gradients, two Adam moments and a
    best-epoch copy) and for one training batch in flight (benchmarks/step_memory.py
    checks both against a step's measured tensors)."""
    with torch.device("meta"):  # shapes only: nothing allocated
        params = sum(p.numel() for p in MRCCL(dims, classes, cfg.model).parameters())
    width = sum(dims.values())
    # Training: gathered + standardised batch, two noisy views, float32, plus encoder
    # and head activations kept for the backward pass (about 100 KB a sample at hidden
    # 128 measured, counted as 112 hidden-wide float32 rows per layer), plus the NT-Xent
    # similarity blocks.
    n = cfg.optim.batch_size
    train = n * (width * 4 * 4 + cfg.model.hidden * 4 * 112 * (1 + cfg.model.layers))
    train += SIMILARITY_ARRAYS[contrastive_path(cfg)] * n * n * 4
    return params * 4 * 5, train


def trial_bytes(dims: dict[str, int], classes: int, feature_bytes: int, cfg: Config) -> int:
    """Upper bound on one trial's GPU memory, in bytes."""
    model, train = step_terms(dims, classes, cfg)
    # Inference: the gathered batch as stored (float16, float32 at most) plus its float32
    # copy, standardised in place.
    infer = INFERENCE_BATCH * sum(dims.values()) * (4 + 4)
    # The stage's CUDA graph keeps one training step's memory in its own pool, beside
    # whatever the eager odd-size batch or the validation pass needs.
    return feature_bytes + model + train + max(train, infer) + RUNTIME + CUDA_CONTEXT


def packing(estimate: int, feature_bytes: int, share_features: bool) -> tuple[int, int]:
    """(bytes per trial, bytes per card held once for all its trials) for check_packing:
    with --share-features a trial holds everything but the features (its own CUDA
    context included), and the card holds the one copy of the features and the CUDA
    context of the process holding it (card_features.py)."""
    if not share_features:
        return estimate, 0
    return estimate - feature_bytes, feature_bytes + CUDA_CONTEXT


def own_copy_fraction(estimate: int, gpus_per_trial: float, card_bytes: int | None) -> float:
    """The GPU fraction for a process that uploads its own copy of the features (the
    confirm step's retraining) in a search whose trials share one: at least the trials'
    fraction, and one that fits a whole trial's estimate."""
    if not card_bytes or gpus_per_trial >= 1:
        return gpus_per_trial
    fits = int(card_bytes // estimate)
    return max(gpus_per_trial, 1 / fits) if fits else 1.0


def check_packing(estimate: int, gpus_per_trial: float, card_bytes: int, shared: int = 0) -> None:
    """Refuse a GPU fraction whose share of the card cannot hold a trial; `shared`
    bytes of the card (packing's second value) are held once for all its trials."""
    share = gpus_per_trial * (card_bytes - shared)
    if 0 < gpus_per_trial < 1 and estimate > share:
        fits = int((card_bytes - shared) // estimate)
        hint = f"use --gpus-per-trial {1 / fits:.3g} or more" if fits else "it needs a whole card"
        raise UsageError(
            f"--gpus-per-trial {gpus_per_trial:g}: a trial needs about {estimate / 2**30:.1f} GiB "
            f"of GPU memory, more than its {share / 2**30:.1f} GiB share of a "
            f"{card_bytes / 2**30:.0f} GiB card; {hint}"
        )
