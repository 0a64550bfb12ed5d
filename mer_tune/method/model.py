"""The MR-CCL model: specificity encoders, a shared invariant encoder, combinatorial
contrastive terms, noise embedding enhancement (NEE) and four classifier heads."""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

from mer_tune.data.layout import MODALITIES
from mer_tune.method.config import HEADS, LossConfig, ModelConfig, NoiseConfig

# ---------------------------------------------------------------- contrastive loss

PAIRS = [("audio", "visual"), ("audio", "text"), ("visual", "text")]
N_TERMS = 9  # 3 pairs, 3 one-vs-two, 3 clean-vs-noised
MIN_TAU, MAX_TAU = 0.01, 1.0


def nt_xent(
    z1: torch.Tensor,
    z2: torch.Tensor,
    temperature: float | torch.Tensor,
    ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """NT-Xent (SimCLR): the positive of sample i in one view is sample i in the other;
    every other sample of both views is a negative. Embeddings are L2-normalised and the
    similarities divided by the temperature once.

    `ids` names the sample behind each row: rows of the same sample (an oversampled
    duplicate) are not each other's negatives. The similarities and the loss are float32
    even under autocast: in bf16 a logit at temperature 0.1 resolves only to about 0.04."""
    n = z1.shape[0]
    with torch.autocast(z1.device.type, enabled=False):
        z = torch.cat([z1, z2])
        z = F.normalize(z.to(torch.promote_types(z.dtype, torch.float32)), dim=1)
        sim = z @ z.T / temperature
        # Built on the device: a CPU-to-GPU copy could not be captured into a CUDA graph.
        targets = torch.cat(
            [torch.arange(n, 2 * n, device=z.device), torch.arange(0, n, device=z.device)]
        )
        if ids is None:
            drop = torch.eye(2 * n, dtype=torch.bool, device=z.device)
        else:
            both = torch.cat([ids, ids])
            positive = torch.zeros(2 * n, 2 * n, dtype=torch.bool, device=z.device)
            positive.scatter_(1, targets[:, None], True)
            drop = (both[:, None] == both[None, :]) & ~positive  # self and duplicates
        return F.cross_entropy(sim.masked_fill(drop, float("-inf")), targets)


# ---------------------------------------------------------------- noise embedding enhancement


def ddpm_noise_std(timesteps: int, beta_start: float, beta_end: float) -> torch.Tensor:
    """sqrt(1 - abar_t) for t = 0..T-1 under the scaled-linear beta schedule."""
    return (1.0 - _alpha_bar(timesteps, beta_start, beta_end)).sqrt()


@functools.cache
def _alpha_bar(
    timesteps: int, beta_start: float, beta_end: float, device: str = "cpu"
) -> torch.Tensor:
    betas = (
        torch.linspace(math.sqrt(beta_start), math.sqrt(beta_end), timesteps, dtype=torch.float64)
        ** 2
    )
    return torch.cumprod(1.0 - betas, dim=0).float().to(device)


MAX_MASK_PROB = 0.95


def add_noise(
    x: torch.Tensor,
    modality: str,
    cfg: NoiseConfig,
    gen: torch.Generator | None,
    stats: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """An augmented view of standardised features x for the NEE contrastive term.

    With cfg.applied_to=raw and `stats` = (mean, std) of the modality, the noise is added to the
    raw features (x * std + mean), as the released code does, and the result standardised
    again. Random numbers come from `gen`, on its device; with gen=None from the default
    generator of x's device (what a CUDA graph can capture). Nothing here reads a value
    back to the host, so a GPU step never waits on it."""
    if cfg.applied_to == "raw" and stats is not None:
        mean, std = stats
        return (_noised(x * std + mean, modality, cfg, gen) - mean) / std
    return _noised(x, modality, cfg, gen)


def _noised(
    x: torch.Tensor, modality: str, cfg: NoiseConfig, gen: torch.Generator | None
) -> torch.Tensor:
    device = gen.device if gen is not None else x.device
    if cfg.kind == "ddpm":
        abar = _alpha_bar(
            getattr(cfg.timesteps, modality), cfg.beta_start, cfg.beta_end, str(device)
        )
        # One t per batch, as in the method.
        t = torch.randint(len(abar), (1,), generator=gen, device=device)
        eps = torch.randn(x.shape, generator=gen, device=device).to(x.device, x.dtype)
        keep = abar[t].to(x.device)
        return keep.sqrt() * x + cfg.scale * (1 - keep).sqrt() * eps
    if cfg.kind == "gaussian":
        eps = torch.randn(x.shape, generator=gen, device=device).to(x.device, x.dtype)
        return x + cfg.scale * cfg.gaussian_std * eps
    if cfg.kind == "mask":
        drop = min(cfg.mask_prob * cfg.scale, MAX_MASK_PROB)
        keep = torch.rand(x.shape, generator=gen, device=device) >= drop
        return x * keep.to(x.device, x.dtype)
    return x


# ---------------------------------------------------------------- the model


def _mlp_head(in_dim: int, dims: list[int], dropout: float, n_classes: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for d in dims:
        layers += [nn.Linear(in_dim, d), nn.BatchNorm1d(d), nn.ReLU(), nn.Dropout(dropout)]
        in_dim = d
    layers.append(nn.Linear(in_dim, n_classes))
    return nn.Sequential(*layers)


class SpecificityEncoder(nn.Module):
    """Projection to `hidden`, then Transformer layers over a length-1 sequence per sample.
    batch_first=True keeps attention inside each sample (never across the batch)."""

    def __init__(self, in_dim: int, cfg: ModelConfig):
        super().__init__()
        self.proj = nn.Sequential(nn.Linear(in_dim, cfg.hidden), nn.LayerNorm(cfg.hidden))
        layer = nn.TransformerEncoderLayer(
            cfg.hidden,
            cfg.heads,
            dim_feedforward=2 * cfg.hidden,
            dropout=cfg.dropout,
            batch_first=True,
        )
        self.layers = (
            nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)
            if cfg.layers
            else None
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.proj(x)
        s = self.layers(h.unsqueeze(1)).squeeze(1) if self.layers is not None else h
        return h, s


class MRCCL(nn.Module):
    def __init__(self, dims: dict[str, int], n_classes: int, cfg: ModelConfig):
        super().__init__()
        h = cfg.hidden
        self.specific = nn.ModuleDict({m: SpecificityEncoder(dims[m], cfg) for m in MODALITIES})
        # One invariant encoder shared by all modalities.
        self.invariant = nn.Sequential(
            nn.Linear(h, h),
            nn.Dropout(cfg.dropout),
            nn.LeakyReLU(),
            nn.Linear(h, h),
            nn.Dropout(cfg.dropout),
            nn.LeakyReLU(),
        )
        # Each modality against the concatenation of the other two: project it to 2h.
        self.to_pair = nn.ModuleDict({m: nn.Linear(h, 2 * h) for m in MODALITIES})
        # Log-multipliers of the temperature of the nine contrastive terms (3 pairs, 3
        # one-vs-two, 3 noise); trained only under loss.learn_temperature.
        self.log_tau = nn.Parameter(torch.zeros(N_TERMS))
        self.heads = nn.ModuleDict(
            {
                head: _mlp_head(
                    3 * h if head == "fusion" else h, cfg.head_dims, cfg.head_dropout, n_classes
                )
                for head in HEADS
            }
        )

    def encode(
        self, x: dict[str, torch.Tensor]
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """(per-modality embedding: specificity output plus the shared invariant code,
        the invariant codes alone)."""
        emb, inv = {}, {}
        for m in MODALITIES:
            h, s = self.specific[m](x[m])
            inv[m] = self.invariant(h)
            emb[m] = s + inv[m]
        return emb, inv

    def embed(self, x: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self.encode(x)[0]

    def logits(self, emb: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        fused = torch.cat([emb[m] for m in MODALITIES], dim=1)
        return {head: self.heads[head](fused if head == "fusion" else emb[head]) for head in HEADS}

    def temperatures(self, cfg: LossConfig) -> list[float | torch.Tensor]:
        """The nine terms' temperatures: cfg.temperature, or learned from it (kept in
        [MIN_TAU, MAX_TAU] so that no term's logits blow up)."""
        if not cfg.learn_temperature:
            return [cfg.temperature] * N_TERMS
        taus = (cfg.temperature * self.log_tau.exp()).clamp(MIN_TAU, MAX_TAU)
        return list(taus.unbind())

    def contrastive(
        self,
        emb: dict[str, torch.Tensor],
        noisy_emb: dict[str, torch.Tensor] | None,
        cfg: LossConfig,
        ids: torch.Tensor | None = None,
        inv: dict[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """The six combinatorial terms, NEE's clean-vs-noised term per modality and, with
        loss.invariant_weight and the invariant codes `inv`, the codes' three pairs."""
        tau = self.temperatures(cfg)
        pairs = [nt_xent(emb[p], emb[q], tau[k], ids) for k, (p, q) in enumerate(PAIRS)]
        combos = []
        for k, m in enumerate(MODALITIES):
            others = torch.cat([emb[o] for o in MODALITIES if o != m], dim=1)
            combos.append(nt_xent(self.to_pair[m](emb[m]), others, tau[3 + k], ids))
        if cfg.weighting == "paper":
            # The released code: the six modality terms summed over 6.
            loss = (cfg.pair_weight * sum(pairs) + cfg.combo_weight * sum(combos)) / 6
        else:
            loss = (cfg.pair_weight * sum(pairs) + cfg.combo_weight * sum(combos)) / 3
        if noisy_emb is not None and cfg.nee_weight > 0:
            nee = [nt_xent(emb[m], noisy_emb[m], tau[6 + k], ids) for k, m in enumerate(MODALITIES)]
            loss = loss + cfg.nee_weight * sum(nee) / 3
        if inv is not None and cfg.invariant_weight > 0:
            codes = sum(nt_xent(inv[p], inv[q], cfg.temperature, ids) for p, q in PAIRS)
            loss = loss + cfg.invariant_weight * codes / 3
        return loss
