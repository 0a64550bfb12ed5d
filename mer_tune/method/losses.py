"""The losses of the MR-CCL model: NT-Xent (the fused autograd functions and the general
form they replace), the DDPM noise of the noise embedding enhancement (NEE), and the
central moment discrepancy (CMD) between the modalities' invariant codes."""

from __future__ import annotations

import functools
import math
import os

import torch
import torch.nn.functional as F

from mer_tune.method.config import NoiseConfig

# ---------------------------------------------------------------- contrastive loss


def fused_kernels() -> bool:
    """The fused step (TokenLayer, batched NT-Xent, fused Adam on the CPU) unless
    MER_TUNE_FUSED=0 asks for the general-purpose modules it replaces: the same results
    to rounding, for checking that (tests/test_model.py, benchmarks/step_speed.py)."""
    return os.environ.get("MER_TUNE_FUSED", "1") != "0"


N_TERMS = 9  # 3 pairs, 3 one-vs-two, 3 clean-vs-noised


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
    return nt_xent_terms([(z1, z2)], [temperature], ids)[0]


def _nt_xent_general(
    z1: torch.Tensor, z2: torch.Tensor, temperature: float | torch.Tensor, ids: torch.Tensor | None
) -> torch.Tensor:
    """One term the plain way: its own masks, product and cross-entropy (unfused path)."""
    n = z1.shape[0]
    with torch.autocast(z1.device.type, enabled=False):
        z = torch.cat([z1, z2])
        z = F.normalize(z.to(torch.promote_types(z.dtype, torch.float32)), dim=1)
        targets, drop = _positives_and_negatives(n, ids, z.device)
        sim = z @ z.T / temperature
        return F.cross_entropy(sim.masked_fill(drop, float("-inf")), targets)


class _NTXentRows(torch.autograd.Function):
    """Per-row NT-Xent of stacked views z (terms, 2n, d), normalised and scaled by
    1/sqrt(tau): row i's loss is logsumexp_j(s_ij) - s_i,target(i) over s = z @ z.T with
    the `drop` columns at -inf (a (2n, 2n) mask, or the flat positions of its entries).
    Returns each term's mean over its rows.

    Written out because autograd's chain for it (product, masked copy, log-softmax,
    cross-entropy and their backward) allocates and walks seven (terms, 2n, 2n) tensors a
    step, which with the products took half of a CPU step. Here the product's output is masked in place, its
    softmax P is the one such tensor kept for the backward pass, the gradient on the
    similarities dS = (P - onehot) x scale is formed in P's place, and since s is
    symmetric, dz = (dS + dS.T) @ z: one matrix product."""

    @staticmethod
    def forward(ctx, z: torch.Tensor, targets: torch.Tensor, drop: torch.Tensor) -> torch.Tensor:
        s = torch.bmm(z, z.transpose(1, 2))
        if drop.dtype == torch.bool:
            s.masked_fill_(drop, float("-inf"))
        else:  # flat positions: a few per row, where a mask would walk every entry
            s.view(s.shape[0], -1).index_fill_(1, drop, float("-inf"))
        top, top_at = s.max(-1, keepdim=True)
        positive = s.gather(-1, targets)
        p = torch.softmax(s, -1)
        del s
        # logsumexp from the softmax's own pieces: P at the row's maximum is at least
        # 1/(2n), so its log never underflows (P at the positive could, at tau 0.01).
        rows = top - p.gather(-1, top_at).log() - positive
        ctx.save_for_backward(z, targets, p)
        return rows.squeeze(-1).mean(-1)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        if getattr(ctx, "spent", False):  # the softmax was overwritten by the first pass
            raise RuntimeError("nt_xent_terms cannot be differentiated twice (retain_graph)")
        ctx.spent = True
        z, targets, p = ctx.saved_tensors
        # The gradient of each row's loss on its logits: softmax minus the one-hot target,
        # in place (the softmax is not needed again).
        d = p.scatter_add_(-1, targets, torch.full_like(targets, -1, dtype=p.dtype))
        d.mul_((grad / p.shape[1]).view(-1, 1, 1))
        with torch.autocast(z.device.type, enabled=False):  # float32, as the forward
            return torch.bmm(d + d.transpose(1, 2), z), None, None


# A view's own block is shifted by the largest possible similarity, 1/tau (unit vectors
# scaled by 1/sqrt(tau)), so no exp overflows; every entry is then at least -2/tau, and
# up to a spread of 80 its exp is a normal float32 (exp(-87) is the smallest), so no row
# sum underflows either. Below that temperature the terms take _NTXentRows, which shifts
# each row by its own maximum.
MAX_SHIFTED_SPREAD = 80.0


class _SharedBlocksNTXent(torch.autograd.Function):
    """NT-Xent of several terms over one stack of views u (views, n, d), each row
    normalised and scaled by 1/sqrt(tau), one tau for all: term t pairs view xs[t] with
    view ys[t]. Returns each term's mean over its 2n rows, as _NTXentRows does.

    Term t's similarities are the blocks [[X X', X Y'], [Y X', Y Y']]. A view's own block
    X X' is the same in every term that holds it (the audio embedding is in three), and
    Y X' is X Y' transposed, so each is computed once: one block per view and one per
    term, 21 n x n blocks for the model's nine terms instead of 36. The blocks hold exp(s
    - 1/tau) with the excluded entries at 0; a row's log-sum-exp is 1/tau plus the log of
    its blocks' sums. The gradient on a block is its exp times a coefficient per row (and,
    for X Y', per column, from the rows of Y), minus the positives on X Y''s diagonal."""

    @staticmethod
    def forward(ctx, u, xs, ys, shift, own_drop, cross_drop):
        own = torch.bmm(u, u.transpose(1, 2)).sub_(shift).exp_()
        _zero(own, own_drop)
        # Whole views picked by plain indices: no index tensor to copy to a GPU.
        x = torch.stack([u[k] for k in xs])
        y = torch.stack([u[k] for k in ys])
        cross = torch.bmm(x, y.transpose(1, 2)).sub_(shift).exp_()
        _zero(cross, cross_drop)
        own_sums = own.sum(-1)
        zx = torch.stack([own_sums[k] for k in xs]).add_(cross.sum(-1))
        zy = torch.stack([own_sums[k] for k in ys]).add_(cross.sum(-2))
        n = u.shape[1]
        logs = zx.log().sum(-1).add_(zy.log().sum(-1)).div_(2 * n)
        ctx.save_for_backward(u, x, y, own, cross, zx, zy)
        ctx.xs, ctx.ys = xs, ys
        return logs.add_(shift).sub_((x * y).sum(-1).mean(-1))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        if getattr(ctx, "spent", False):  # the blocks were overwritten by the first pass
            raise RuntimeError("nt_xent_terms cannot be differentiated twice (retain_graph)")
        ctx.spent = True
        u, x, y, own, cross, zx, zy = ctx.saved_tensors
        n = u.shape[1]
        # d(row's loss)/d(its entry) = exp(entry - shift) / (row sum) x grad / 2n.
        row_x = (grad / (2 * n)).view(-1, 1) / zx
        row_y = (grad / (2 * n)).view(-1, 1) / zy
        own_rows = torch.zeros(u.shape[:2], dtype=u.dtype, device=u.device)
        for t, (i, j) in enumerate(zip(ctx.xs, ctx.ys, strict=True)):
            own_rows[i] += row_x[t]
            own_rows[j] += row_y[t]
        # An own block is symmetric: entry (i, j) is in row i and row j.
        own.mul_(own_rows[:, :, None] + own_rows[:, None, :])
        cross.mul_(row_x[:, :, None] + row_y[:, None, :])
        # Each positive is in two rows (x_i's and y_i's), each weighing it 1/2n.
        cross.diagonal(dim1=1, dim2=2).sub_((grad / n).view(-1, 1))
        with torch.autocast(u.device.type, enabled=False):  # float32, as the forward
            du = torch.bmm(own, u)
            dx = torch.bmm(cross, y)
            dy = torch.bmm(cross.transpose(1, 2), x)
        for t, (i, j) in enumerate(zip(ctx.xs, ctx.ys, strict=True)):
            du[i] += dx[t]
            du[j] += dy[t]
        return du, None, None, None, None, None


def _zero(blocks: torch.Tensor, drop: torch.Tensor | None) -> None:
    """Entries of (k, n, n) blocks that are no negative, set to 0: by a (n, n) mask, or
    by the flat positions of its entries (on the CPU, where a mask walks every entry)."""
    if drop is None:
        return
    if drop.dtype == torch.bool:
        blocks.masked_fill_(drop, 0.0)
    else:
        blocks.view(blocks.shape[0], -1).index_fill_(1, drop, 0.0)


def _as_taken(mask: torch.Tensor | None) -> torch.Tensor | None:
    """A mask as _NTXentRows and _zero take it: on the CPU the flat positions of its
    entries (a few per row, where the mask would walk every entry), elsewhere the mask
    itself (nonzero reads a count back to the host, which no CUDA graph could)."""
    if mask is None or mask.device.type != "cpu":
        return mask
    return mask.view(-1).nonzero().squeeze(1)


def _block_masks(
    n: int, ids: torch.Tensor | None, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(a view's own block's excluded entries: itself and, with `ids`, its duplicates;
    a pair's cross block's: the other rows of the same sample, never the positive)."""
    eye = torch.eye(n, dtype=torch.bool, device=device)
    if ids is None:
        return eye, None
    same = ids[:, None] == ids[None, :]
    return same, same & ~eye


def _positives_and_negatives(
    n: int, ids: torch.Tensor | None, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """(each row's positive column, the mask of columns that are no negative of a row:
    itself and, with `ids`, the other rows of the same sample)."""
    # Built on the device: a CPU-to-GPU copy could not be captured into a CUDA graph.
    targets = torch.cat([torch.arange(n, 2 * n, device=device), torch.arange(0, n, device=device)])
    if ids is None:
        return targets, torch.eye(2 * n, dtype=torch.bool, device=device)
    both = torch.cat([ids, ids])
    positive = torch.zeros(2 * n, 2 * n, dtype=torch.bool, device=device)
    positive.scatter_(1, targets[:, None], True)
    return targets, (both[:, None] == both[None, :]) & ~positive


def nt_xent_terms(
    views: list[tuple[torch.Tensor, torch.Tensor]],
    temperatures: list[float] | list[torch.Tensor],
    ids: torch.Tensor | None = None,
) -> list[torch.Tensor]:
    """NT-Xent of several pairs of views of the same batch, as `nt_xent` of each: the
    masks are built once, and the terms of one width share their similarity blocks
    (_SharedBlocksNTXent: each view's own block once, each pair's cross block once) or,
    under learned or differing temperatures, one batched product and one cross-entropy
    (_NTXentRows). Fewer, larger kernels than a call per term."""
    if not fused_kernels():
        return [
            _nt_xent_general(a, b, t, ids) for (a, b), t in zip(views, temperatures, strict=True)
        ]
    z0 = views[0][0]
    n, device = z0.shape[0], z0.device

    # Each path's masks, built once when a width group first takes that path (the
    # default config takes only the shared blocks' path).
    @functools.cache
    def block_masks() -> tuple[torch.Tensor | None, ...]:
        return tuple(_as_taken(m) for m in _block_masks(n, ids, device))

    @functools.cache
    def row_masks() -> tuple[torch.Tensor, torch.Tensor]:
        targets, drop = _positives_and_negatives(n, ids, device)
        return targets[None, :, None], _as_taken(drop)

    out: list[torch.Tensor | None] = [None] * len(views)
    with torch.autocast(device.type, enabled=False):
        widths: dict[int, list[int]] = {}
        for k, (a, _) in enumerate(views):
            widths.setdefault(a.shape[1], []).append(k)
        for members in widths.values():
            taus = [temperatures[k] for k in members]
            shared = _shared_blocks([views[k] for k in members], taus)
            if shared is not None:
                uniques, xs, ys, tau = shared
                u = torch.stack(uniques)
                u = F.normalize(u.to(torch.promote_types(u.dtype, torch.float32)), dim=-1)
                loss = _SharedBlocksNTXent.apply(u * tau**-0.5, xs, ys, 1 / tau, *block_masks())
            else:
                z = torch.stack([torch.cat(views[k]) for k in members])
                z = F.normalize(z.to(torch.promote_types(z.dtype, torch.float32)), dim=-1)
                # Scaling the embeddings by 1/sqrt(tau) divides their products by tau,
                # on a quarter of the numbers (2n x d, not 2n x 2n).
                if isinstance(taus[0], torch.Tensor):
                    z = z * torch.stack(taus).to(z.dtype).view(-1, 1, 1) ** -0.5
                elif len(set(taus)) == 1:  # one plain number
                    z = z * float(taus[0]) ** -0.5
                else:  # plain numbers: no tensor of them, so no host-to-device copy
                    z = torch.stack([z[j] * float(t) ** -0.5 for j, t in enumerate(taus)])
                targets, drop = row_masks()
                loss = _NTXentRows.apply(z, targets.expand(len(members), -1, -1), drop)
            for j, k in enumerate(members):
                out[k] = loss[j]
    return out  # type: ignore[return-value]


def _shared_blocks(
    views: list[tuple[torch.Tensor, torch.Tensor]], temperatures: list
) -> tuple[list[torch.Tensor], tuple[int, ...], tuple[int, ...], float] | None:
    """(the distinct view tensors, each term's two positions among them, the one
    temperature) when the terms can share their blocks (_SharedBlocksNTXent): one plain
    temperature for all, not below 2 / MAX_SHIFTED_SPREAD, and no term pairing a tensor
    with itself. None otherwise (learned temperatures, for one)."""
    tau = temperatures[0]
    if any(isinstance(t, torch.Tensor) for t in temperatures) or any(
        t != tau for t in temperatures
    ):
        return None
    if 2 / float(tau) > MAX_SHIFTED_SPREAD or any(a is b for a, b in views):
        return None
    uniques: list[torch.Tensor] = []

    def position(view: torch.Tensor) -> int:
        for k, seen in enumerate(uniques):
            if seen is view:
                return k
        uniques.append(view)
        return len(uniques) - 1

    xs = tuple(position(a) for a, _ in views)
    ys = tuple(position(b) for _, b in views)
    return uniques, xs, ys, float(tau)


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


# ---------------------------------------------------------------- central moment discrepancy


def cmd(x1: torch.Tensor, x2: torch.Tensor, moments: int = 5) -> torch.Tensor:
    """Central moment discrepancy (Zellinger et al. 2017, in MISA's form): the L2 distance
    of the two batches' means plus that of their k-th central moments, k = 2..moments,
    each per dimension over the batch."""
    m1, m2 = x1.mean(0), x2.mean(0)
    c1, c2 = x1 - m1, x2 - m2
    # vector_norm's gradient at zero is zero, where sqrt of a sum of squares gives NaN.
    total = torch.linalg.vector_norm(m1 - m2)
    for k in range(2, moments + 1):
        total = total + torch.linalg.vector_norm(c1.pow(k).mean(0) - c2.pow(k).mean(0))
    return total
