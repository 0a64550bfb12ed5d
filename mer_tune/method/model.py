"""The MR-CCL model: specificity encoders, a shared invariant encoder, combinatorial
contrastive terms, noise embedding enhancement (NEE) and four classifier heads."""

from __future__ import annotations

import copy
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from mer_tune.data.layout import MODALITIES
from mer_tune.method.config import HEADS, MAX_TAU, MIN_TAU, LossConfig, ModelConfig
from mer_tune.method.losses import N_TERMS, cmd, fused_kernels, nt_xent_terms

PAIRS = [("audio", "visual"), ("audio", "text"), ("visual", "text")]


class Dropout(nn.Dropout):
    """nn.Dropout whose masks on the CPU come from torch.rand: each element is kept with
    probability 1 - p, as before, at a third of the cost. torch's CPU Bernoulli sampler
    is vectorised (MKL) only on Intel CPUs; elsewhere it draws element by element, 300 us
    for a 256 x 128 mask where torch.rand takes 110 us (benchmarks/RESULTS.md), which
    with 44 masks a step was a sixth of a CPU step. On a GPU this is nn.Dropout."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0 or x.device.type != "cpu" or self.p >= 1:
            return super().forward(x)
        # Drawn in float32 whatever x's dtype: bf16 steps of 1/256 would bias the rate.
        scale = torch.rand(x.shape, device=x.device).ge_(self.p).to(x.dtype)
        scale.mul_(1.0 / (1.0 - self.p))
        return x.mul_(scale) if self.inplace else x * scale


def _with_fast_dropout(module: nn.Module) -> None:
    """Every nn.Dropout below `module` replaced by Dropout (no parameters, so the state
    dict is unchanged)."""
    for name, child in module.named_children():
        if type(child) is nn.Dropout:
            setattr(module, name, Dropout(child.p, child.inplace))
        else:
            _with_fast_dropout(child)


def _mlp_head(in_dim: int, dims: list[int], dropout: float, n_classes: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for d in dims:
        layers += [nn.Linear(in_dim, d), nn.BatchNorm1d(d), nn.ReLU(), nn.Dropout(dropout)]
        in_dim = d
    layers.append(nn.Linear(in_dim, n_classes))
    return nn.Sequential(*layers)


class TokenLayer(nn.TransformerEncoderLayer):
    """nn.TransformerEncoderLayer (post-norm, ReLU) on a sequence of one token per
    sample. Attention over a single key gives it weight 1, so self-attention is the value
    projection followed by the output projection: the query and key projections, the
    scores and the softmax are skipped. Attention dropout still drops each head's single
    weight per sample, drawing the same random numbers in the same order as the general
    layer, so training follows the same path (tests/test_model.py). Same parameters and
    state-dict names as nn.TransformerEncoderLayer."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (batch, hidden)
        attn = self.self_attn
        h, heads = attn.embed_dim, attn.num_heads
        value = F.linear(x, attn.in_proj_weight[2 * h :], attn.in_proj_bias[2 * h :])
        if self.training and attn.dropout > 0:
            # The attention weights (batch, heads, 1, 1), all 1, after dropout.
            ones = torch.ones(x.shape[0], heads, 1, 1, device=x.device, dtype=x.dtype)
            keep = F.dropout(ones, attn.dropout, training=True).view(-1, heads, 1)
            value = (value.view(-1, heads, h // heads) * keep).view(-1, h)
        x = self.norm1(x + self.dropout1(attn.out_proj(value)))
        return self.norm2(
            x + self.dropout2(self.linear2(self.dropout(self.activation(self.linear1(x)))))
        )


class TokenStack(nn.Module):
    """`layers` TokenLayers one after another (state-dict names as nn.TransformerEncoder's)."""

    def __init__(self, layer: TokenLayer, count: int):
        super().__init__()
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(count))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class GeneralStack(nn.Module):
    """nn.TransformerEncoder over a length-1 sequence (the unfused path)."""

    def __init__(self, layer: nn.TransformerEncoderLayer, count: int):
        super().__init__()
        with torch.random.fork_rng(devices=[]):  # draws nothing the fused path does not
            general = nn.TransformerEncoderLayer(
                layer.self_attn.embed_dim,
                layer.self_attn.num_heads,
                dim_feedforward=layer.linear1.out_features,
                dropout=layer.dropout.p,
                batch_first=True,
            )
        general.load_state_dict(layer.state_dict())
        self.layers = nn.TransformerEncoder(general, count, enable_nested_tensor=False).layers

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.unsqueeze(1)
        for layer in self.layers:
            x = layer(x)
        return x.squeeze(1)


class SpecificityEncoder(nn.Module):
    """Projection to `hidden`, then Transformer layers over a length-1 sequence per sample
    (attention never crosses samples)."""

    def __init__(self, in_dim: int, cfg: ModelConfig):
        super().__init__()
        self.proj = nn.Sequential(nn.Linear(in_dim, cfg.hidden), nn.LayerNorm(cfg.hidden))
        layer = TokenLayer(
            cfg.hidden,
            cfg.heads,
            dim_feedforward=2 * cfg.hidden,
            dropout=cfg.dropout,
            batch_first=True,
        )
        if not cfg.layers:
            self.layers = None
        elif fused_kernels():
            self.layers = TokenStack(layer, cfg.layers)
        else:  # the general layer, attending over the length-1 sequence
            self.layers = GeneralStack(layer, cfg.layers)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.proj(x)
        s = self.layers(h) if self.layers is not None else h
        return h, s


class Encoded(NamedTuple):
    """What the encoders make of a batch, per modality: the specificity features F-hat and
    the invariant codes H = Inv(F-hat) (None where nothing reads them)."""

    specific: dict[str, torch.Tensor]
    invariant: dict[str, torch.Tensor] | None


class MRCCL(nn.Module):
    """`cfg.invariant` wires the invariant codes: `figure` (the paper's figure) feeds the
    heads and the noise terms F-hat and the six modality terms H; `unused` (the released
    file) feeds every term and head F-hat; `sum` feeds all of them F-hat + H, with H
    read from the projection before the Transformer layers."""

    def __init__(self, dims: dict[str, int], n_classes: int, cfg: ModelConfig):
        super().__init__()
        h = cfg.hidden
        self.wiring = cfg.invariant
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
        _with_fast_dropout(self)

    def encode(self, x: dict[str, torch.Tensor], invariant: bool = True) -> Encoded:
        """F-hat per modality and, with `invariant` (or under `sum`, where every view needs
        them), the invariant codes."""
        spec: dict[str, torch.Tensor] = {}
        inv: dict[str, torch.Tensor] = {}
        for m in MODALITIES:
            h, s = self.specific[m](x[m])
            if self.wiring == "sum":
                inv[m] = self.invariant(h)
                spec[m] = s + inv[m]
            else:
                spec[m] = s
                if invariant:
                    inv[m] = self.invariant(s)
        return Encoded(spec, inv if invariant or self.wiring == "sum" else None)

    def embed(self, x: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """What the heads read: F-hat (F-hat + H under `sum`)."""
        return self.encode(x, invariant=False).specific

    def modality_views(self, enc: Encoded) -> dict[str, torch.Tensor]:
        """What the six modality terms contrast: H under `figure`, else the heads' input."""
        if self.wiring == "figure":
            assert enc.invariant is not None
            return enc.invariant
        return enc.specific

    def logits(self, emb: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        fused = torch.cat([emb[m] for m in MODALITIES], dim=1)
        return {head: self.heads[head](fused if head == "fusion" else emb[head]) for head in HEADS}

    def temperatures(self, cfg: LossConfig) -> list[float | torch.Tensor]:
        """The nine terms' temperatures: cfg.temperature, or learned from
        cfg.temperature_init (kept in [MIN_TAU, MAX_TAU] so that no term's logits blow up)."""
        if not cfg.learn_temperature:
            return [cfg.temperature] * N_TERMS
        taus = (cfg.temperature_init * self.log_tau.exp()).clamp(MIN_TAU, MAX_TAU)
        return list(taus.unbind())

    def contrastive(
        self,
        enc: Encoded,
        noisy: dict[str, torch.Tensor] | None,
        cfg: LossConfig,
        ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The six combinatorial terms on the modality views, NEE's clean-vs-noised term per
        modality (the heads' input against that of the noised features, `noisy`) and
        loss.invariant's term on the invariant codes."""
        tau = self.temperatures(cfg)
        emb = self.modality_views(enc)
        views = [(emb[p], emb[q]) for p, q in PAIRS]
        for m in MODALITIES:
            others = torch.cat([emb[o] for o in MODALITIES if o != m], dim=1)
            views.append((self.to_pair[m](emb[m]), others))
        with_nee = noisy is not None and cfg.nee_weight > 0
        if with_nee:
            views += [(enc.specific[m], noisy[m]) for m in MODALITIES]
        terms = nt_xent_terms(views, tau[: len(views)], ids)
        pairs, combos, nee = terms[:3], terms[3:6], terms[6:]
        if cfg.weighting == "paper":
            # The released code: the six modality terms summed over 6.
            loss = (cfg.pair_weight * sum(pairs) + cfg.combo_weight * sum(combos)) / 6
        else:
            loss = (cfg.pair_weight * sum(pairs) + cfg.combo_weight * sum(combos)) / 3
        if with_nee:
            loss = loss + cfg.nee_weight * sum(nee) / 3
        if cfg.invariant != "none" and cfg.invariant_weight > 0:
            loss = loss + cfg.invariant_weight * self.invariant_loss(enc, cfg, ids)
        return loss

    def reads_invariant(self, cfg: LossConfig) -> bool:
        """Whether the contrastive terms under `cfg` read the invariant codes."""
        return self.wiring != "unused" or (cfg.invariant != "none" and cfg.invariant_weight > 0)

    def invariant_loss(
        self, enc: Encoded, cfg: LossConfig, ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The mean over the three modality pairs of CMD (5 moments, as MISA) or NT-Xent
        between their invariant codes (`ids`: an oversampled duplicate is no negative)."""
        inv = enc.invariant
        assert inv is not None
        if cfg.invariant == "cmd":
            with torch.autocast(inv["audio"].device.type, enabled=False):  # moments in fp32
                return sum(cmd(inv[p].float(), inv[q].float()) for p, q in PAIRS) / 3
        codes = nt_xent_terms([(inv[p], inv[q]) for p, q in PAIRS], [cfg.temperature] * 3, ids)
        return sum(codes) / 3
