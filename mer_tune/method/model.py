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


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent (SimCLR): the positive of sample i in one view is sample i in the other;
    every other sample of both views is a negative. Embeddings are L2-normalised and the
    similarities divided by the temperature once."""
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    sim = z @ z.T / temperature
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    # Built on the device: a CPU-to-GPU copy could not be captured into a CUDA graph.
    targets = torch.cat(
        [torch.arange(n, 2 * n, device=z.device), torch.arange(0, n, device=z.device)]
    )
    return F.cross_entropy(sim, targets)


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


def add_noise(
    x: torch.Tensor, modality: str, cfg: NoiseConfig, gen: torch.Generator | None
) -> torch.Tensor:
    """An augmented view of standardised features x for the NEE contrastive term.

    Random numbers come from `gen`, on its device; with gen=None from the default
    generator of x's device (what a CUDA graph can capture). Nothing here reads a value
    back to the host, so a GPU step never waits on it."""
    device = gen.device if gen is not None else x.device
    if cfg.kind == "ddpm":
        abar = _alpha_bar(
            getattr(cfg.timesteps, modality), cfg.beta_start, cfg.beta_end, str(device)
        )
        # One t per batch, as in the method.
        t = torch.randint(len(abar), (1,), generator=gen, device=device)
        eps = torch.randn(x.shape, generator=gen, device=device).to(x.device, x.dtype)
        keep = abar[t].to(x.device)
        return keep.sqrt() * x + (1 - keep).sqrt() * eps
    if cfg.kind == "gaussian":
        eps = torch.randn(x.shape, generator=gen, device=device).to(x.device, x.dtype)
        return x + cfg.gaussian_std * eps
    if cfg.kind == "mask":
        keep = torch.rand(x.shape, generator=gen, device=device) >= cfg.mask_prob
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
        self.heads = nn.ModuleDict(
            {
                head: _mlp_head(
                    3 * h if head == "fusion" else h, cfg.head_dims, cfg.head_dropout, n_classes
                )
                for head in HEADS
            }
        )

    def embed(self, x: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per-modality embedding: specificity output plus the shared invariant code."""
        out = {}
        for m in MODALITIES:
            h, s = self.specific[m](x[m])
            out[m] = s + self.invariant(h)
        return out

    def logits(self, emb: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        fused = torch.cat([emb[m] for m in MODALITIES], dim=1)
        return {head: self.heads[head](fused if head == "fusion" else emb[head]) for head in HEADS}

    def contrastive(
        self,
        emb: dict[str, torch.Tensor],
        noisy_emb: dict[str, torch.Tensor] | None,
        cfg: LossConfig,
    ) -> torch.Tensor:
        """The six combinatorial terms, plus NEE's clean-vs-noised term per modality."""
        tau = cfg.temperature
        a, v, t = (emb[m] for m in MODALITIES)
        pairs = (nt_xent(a, v, tau) + nt_xent(a, t, tau) + nt_xent(v, t, tau)) / 3
        combos = 0.0
        for m in MODALITIES:
            others = torch.cat([emb[o] for o in MODALITIES if o != m], dim=1)
            combos = combos + nt_xent(self.to_pair[m](emb[m]), others, tau)
        loss = cfg.pair_weight * pairs + cfg.combo_weight * combos / 3
        if noisy_emb is not None and cfg.nee_weight > 0:
            nee = sum(nt_xent(emb[m], noisy_emb[m], tau) for m in MODALITIES) / 3
            loss = loss + cfg.nee_weight * nee
        return loss
