import math

import numpy as np
import pytest
import torch

from mer_tune.method.config import LossConfig, ModelConfig, NoiseConfig
from mer_tune.method.losses import add_noise, ddpm_noise_std, nt_xent
from mer_tune.method.model import MRCCL, PAIRS, Encoded


def reference_nt_xent(z1, z2, tau, ids=None):
    """NT-Xent written out term by term, as in the SimCLR paper; with `ids`, rows of the
    same sample other than the positive are left out of the denominator."""
    z = np.concatenate([z1, z2])
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    n2 = len(z)
    n = n2 // 2
    both = list(ids) * 2 if ids is not None else list(range(n)) * 2
    total = 0.0
    for i in range(n2):
        pos = (i + n) % n2
        num = math.exp(float(z[i] @ z[pos]) / tau)
        negatives = [k for k in range(n2) if k != i and (k == pos or both[k] != both[i])]
        den = sum(math.exp(float(z[i] @ z[k]) / tau) for k in negatives)
        total += -math.log(num / den)
    return total / n2


def test_an_oversampled_duplicate_is_not_a_negative_of_its_twin():
    rng = np.random.default_rng(1)
    z1, z2 = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
    z1[3], z2[3] = z1[1], z2[1]  # row 3 is sample 7 again, as oversampling repeats it
    ids = [4, 7, 9, 7]
    got = nt_xent(torch.tensor(z1), torch.tensor(z2), 0.5, torch.tensor(ids)).item()
    assert abs(got - reference_nt_xent(z1, z2, 0.5, ids)) < 1e-9
    # Unmasked, the twin counts as a negative as close as the positive: a larger loss.
    assert nt_xent(torch.tensor(z1), torch.tensor(z2), 0.5).item() > got + 0.05
    # Without duplicates the sample ids change nothing.
    distinct = nt_xent(torch.tensor(z1[:3]), torch.tensor(z2[:3]), 0.5, torch.tensor(ids[:3]))
    assert abs(distinct.item() - reference_nt_xent(z1[:3], z2[:3], 0.5)) < 1e-9


def test_similarities_are_float32_under_bf16_autocast():
    torch.manual_seed(0)
    z1, z2 = torch.randn(16, 8), torch.randn(16, 8)
    exact = nt_xent(z1, z2, 0.1).item()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = nt_xent(z1, z2, 0.1)
    assert inside.dtype == torch.float32 and abs(inside.item() - exact) < 1e-5


def test_nt_xent_matches_hand_computed_reference():
    rng = np.random.default_rng(0)
    z1, z2 = rng.normal(size=(5, 3)), rng.normal(size=(5, 3))
    got = nt_xent(torch.tensor(z1), torch.tensor(z2), 0.5).item()
    assert abs(got - reference_nt_xent(z1, z2, 0.5)) < 1e-9


def test_nt_xent_small_when_views_agree_and_large_when_they_do_not():
    z = torch.eye(4)
    aligned = nt_xent(z, z, 0.1).item()
    shuffled = nt_xent(z, z[[1, 2, 3, 0]], 0.1).item()
    assert aligned < 0.01 < shuffled


def test_ddpm_noise_schedule_matches_the_paper():
    std = ddpm_noise_std(100, 0.001, 0.1)
    assert abs(std[0].item() - 0.0316) < 1e-3
    assert abs(std[50].item() - 0.689) < 5e-3
    assert abs(std[99].item() - 0.989) < 5e-3


def test_noise_kinds_change_the_input_as_described():
    x = torch.ones(64, 10)
    gen = torch.Generator().manual_seed(0)
    masked = add_noise(x, "audio", NoiseConfig(kind="mask", mask_prob=0.5), gen)
    assert set(masked.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(add_noise(x, "audio", NoiseConfig(kind="none"), gen), x)
    ddpm = add_noise(x, "audio", NoiseConfig(kind="ddpm"), gen)
    assert ddpm.shape == x.shape and not torch.equal(ddpm, x)


def test_noise_scale_multiplies_the_noise_of_each_kind():
    x = torch.zeros(4000, 8)

    def spread(cfg):
        return add_noise(x, "audio", cfg, torch.Generator().manual_seed(0)).std().item()

    assert spread(NoiseConfig(kind="gaussian", scale=2.0)) == pytest.approx(
        2 * spread(NoiseConfig(kind="gaussian")), rel=1e-6
    )
    assert spread(NoiseConfig(kind="ddpm", scale=0.5)) == pytest.approx(
        0.5 * spread(NoiseConfig(kind="ddpm")), rel=1e-6
    )
    ones = torch.ones(4000, 8)
    dropped = (
        1
        - add_noise(
            ones,
            "audio",
            NoiseConfig(kind="mask", mask_prob=0.2, scale=2.0),
            torch.Generator().manual_seed(0),
        )
        .mean()
        .item()
    )
    assert dropped == pytest.approx(0.4, abs=0.02)
    capped = add_noise(
        ones,
        "audio",
        NoiseConfig(kind="mask", mask_prob=0.5, scale=10.0),
        torch.Generator().manual_seed(0),
    )
    assert 0.02 < capped.mean().item() < 0.08  # at most 95% dropped


def test_noise_on_raw_features_is_scaled_back_by_each_dimension_std():
    x = torch.zeros(20000, 2)
    stats = (torch.tensor([5.0, -3.0]), torch.tensor([1.0, 10.0]))
    cfg = NoiseConfig(kind="gaussian", gaussian_std=1.0)
    assert cfg.applied_to == "raw"  # the released code's
    noised = add_noise(x, "audio", cfg, torch.Generator().manual_seed(0), stats)
    # Unit noise on the raw scale is 1/std in standardised units; the mean is untouched.
    assert noised.std(0).tolist() == pytest.approx([1.0, 0.1], rel=0.03)
    assert noised.mean(0).abs().max().item() < 0.03
    standard = NoiseConfig(kind="gaussian", gaussian_std=1.0, applied_to="standardised")
    same = add_noise(x, "audio", standard, torch.Generator().manual_seed(0), stats)
    assert same.std(0).tolist() == pytest.approx([1.0, 1.0], rel=0.03)


def _embeddings(seed=0, n=12, h=8):
    g = torch.Generator().manual_seed(seed)
    return {m: torch.randn(n, h, generator=g) for m in ("audio", "visual", "text")}


def _model(h=8, invariant="unused"):
    torch.manual_seed(0)
    cfg = ModelConfig(hidden=h, heads=2, invariant=invariant)
    return MRCCL({"audio": 6, "visual": 4, "text": 5}, 6, cfg)


FIXED = LossConfig(learn_temperature=False, temperature=0.1)


def test_paper_weighting_halves_the_modality_terms_against_the_noise_terms():
    model, emb, noisy = _model(), Encoded(_embeddings(0), None), _embeddings(1)
    no_noise = FIXED.model_copy(update={"nee_weight": 0.0, "weighting": "equal"})
    equal = model.contrastive(emb, None, no_noise).item()
    paper = model.contrastive(emb, None, no_noise.model_copy(update={"weighting": "paper"}))
    assert paper.item() == pytest.approx(equal / 2, rel=1e-6)
    only_noise = FIXED.model_copy(update={"pair_weight": 0.0, "combo_weight": 0.0})
    for weighting in ("equal", "paper"):
        cfg = only_noise.model_copy(update={"weighting": weighting})
        expected = sum(nt_xent(emb.specific[m], noisy[m], 0.1) for m in noisy).item() / 3
        assert model.contrastive(emb, noisy, cfg).item() == pytest.approx(expected, rel=1e-6)


def test_learned_temperatures_start_at_temperature_init_and_train():
    model, emb = _model(), Encoded(_embeddings(0), None)
    fixed = FIXED.model_copy(update={"temperature": 0.2})
    learned = LossConfig(temperature=0.7, learn_temperature=True, temperature_init=0.2)
    assert model.contrastive(emb, None, learned).item() == pytest.approx(
        model.contrastive(emb, None, fixed).item(), rel=1e-6
    )
    model.contrastive(emb, None, fixed).backward()
    assert model.log_tau.grad is None  # fixed: nothing to learn
    model.contrastive(emb, None, learned).backward()
    grad = model.log_tau.grad
    assert grad is not None and grad[:6].abs().min() > 0 and torch.all(grad[6:] == 0)
    # The released start, 1.0, is the default.
    assert LossConfig().learn_temperature and LossConfig().temperature_init == 1.0


def test_the_invariant_ntxent_term_pulls_a_sample_s_invariant_codes_together():
    model, inv = _model(), _embeddings(2)
    enc = Encoded(_embeddings(0), inv)
    off = model.contrastive(enc, None, FIXED).item()
    ntxent = FIXED.model_copy(update={"invariant": "ntxent", "invariant_weight": 0.5})
    on = model.contrastive(enc, None, ntxent).item()
    codes = sum(nt_xent(inv[p], inv[q], 0.1) for p, q in PAIRS).item() / 3
    assert on == pytest.approx(off + 0.5 * codes, rel=1e-6)
    # An oversampled duplicate is no negative of its twin in this term either.
    ids = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 1])
    twin = {m: v.clone() for m, v in inv.items()}
    for v in twin.values():
        v[11] = v[1]
    masked = model.invariant_loss(Encoded(_embeddings(0), twin), ntxent, ids).item()
    expected = sum(nt_xent(twin[p], twin[q], 0.1, ids) for p, q in PAIRS).item() / 3
    assert masked == pytest.approx(expected, rel=1e-6)


def test_an_invariant_weight_with_no_invariant_term_is_refused():
    with pytest.raises(ValueError, match="weighs no term: set loss.invariant"):
        LossConfig(invariant_weight=0.5)
    assert LossConfig(invariant_weight=0.0).invariant == "none"  # off, as the weight says
    assert LossConfig(invariant="cmd", invariant_weight=0.5).invariant_weight == 0.5


def reference_cmd(x1, x2, moments=5):
    """CMD written out per dimension, as MISA's CMD class computes it."""
    m1, m2 = x1.mean(0), x2.mean(0)
    total = math.sqrt(sum((a - b) ** 2 for a, b in zip(m1, m2, strict=True)))
    for k in range(2, moments + 1):
        s1 = [float(np.mean((x1[:, d] - m1[d]) ** k)) for d in range(x1.shape[1])]
        s2 = [float(np.mean((x2[:, d] - m2[d]) ** k)) for d in range(x2.shape[1])]
        total += math.sqrt(sum((a - b) ** 2 for a, b in zip(s1, s2, strict=True)))
    return total


def test_cmd_matches_a_hand_computed_value_and_is_zero_for_equal_batches():
    from mer_tune.method.losses import cmd

    rng = np.random.default_rng(3)
    x1, x2 = rng.normal(size=(7, 3)), rng.normal(1.0, 2.0, size=(7, 3))
    got = cmd(torch.tensor(x1), torch.tensor(x2)).item()
    assert got == pytest.approx(reference_cmd(x1, x2), rel=1e-9)
    # 2 samples, 1 dimension, by hand: means 0 and 1; central moments k: [-1, 1]^k / 2
    # against [-2, 2]^k / 2, i.e. 1 - 4 = -3 (k=2) and 1 - 16 = -15 (k=4), 0 when odd.
    a, b = torch.tensor([[-1.0], [1.0]]), torch.tensor([[-1.0], [3.0]])
    assert cmd(a, b).item() == pytest.approx(1 + 3 + 15)
    assert cmd(a, a.clone()).item() == 0.0
    # Equal batches: the gradient is zero, not NaN (a square root's at zero is infinite).
    same = a.clone().requires_grad_()
    cmd(same, a.clone()).backward()
    assert torch.isfinite(same.grad).all()


def test_the_cmd_term_acts_on_the_invariant_codes_alone():
    model, inv = _model(), _embeddings(2)
    enc = Encoded(_embeddings(0), inv)
    off = model.contrastive(enc, None, FIXED).item()
    with_cmd = FIXED.model_copy(update={"invariant": "cmd", "invariant_weight": 0.3})
    on = model.contrastive(enc, None, with_cmd).item()
    arrays = {m: v.numpy().astype(np.float64) for m, v in inv.items()}
    codes = sum(reference_cmd(arrays[p], arrays[q]) for p, q in PAIRS) / 3
    assert on == pytest.approx(off + 0.3 * codes, rel=1e-5)


def test_the_figure_wiring_contrasts_the_invariant_codes_and_classifies_f_hat():
    x = {m: torch.randn(9, d) for m, d in {"audio": 6, "visual": 4, "text": 5}.items()}
    figure, unused, summed = _model(invariant="figure"), _model(), _model(invariant="sum")
    for model in (figure, unused, summed):
        model.eval()
    enc = figure.encode(x)
    spec = {m: figure.specific[m](x[m])[1] for m in x}  # F-hat: the specificity output
    for m in x:
        assert torch.allclose(enc.specific[m], spec[m])
        assert torch.allclose(enc.invariant[m], figure.invariant(spec[m]))  # H = Inv(F-hat)
    # The heads read F-hat; the six modality terms read H, the noise terms F-hat.
    assert torch.allclose(figure.embed(x)["audio"], spec["audio"])
    assert figure.modality_views(enc) is enc.invariant
    no_noise = FIXED.model_copy(update={"nee_weight": 0.0})
    on_h = Encoded(enc.invariant, None)
    assert figure.contrastive(enc, None, no_noise).item() == pytest.approx(
        unused.contrastive(on_h, None, no_noise).item(), rel=1e-6
    )
    # unused: every term and head on F-hat; sum: F-hat plus H of the projection.
    assert unused.modality_views(unused.encode(x)) is not None
    assert unused.encode(x, invariant=False).invariant is None
    h = summed.specific["audio"].proj(x["audio"])
    expected = summed.specific["audio"](x["audio"])[1] + summed.invariant(h)
    assert torch.allclose(summed.embed(x)["audio"], expected, atol=1e-6)


def test_attention_never_mixes_samples_of_a_batch():
    torch.manual_seed(0)
    model = MRCCL(
        {"audio": 6, "visual": 4, "text": 5}, 6, ModelConfig(hidden=8, heads=2, head_dims=[8])
    ).eval()
    x = {m: torch.randn(7, d) for m, d in {"audio": 6, "visual": 4, "text": 5}.items()}
    whole = model.logits(model.embed(x))["fusion"]
    alone = model.logits(model.embed({m: v[:1] for m, v in x.items()}))["fusion"]
    assert torch.allclose(whole[:1], alone, atol=1e-5)


# ---------------------------------------------------------------- the fused step


def test_length_one_attention_is_the_general_layer_with_fewer_kernels():
    """TokenLayer skips the query, key and softmax of attention over one token, and
    draws the same dropout masks in the same order as nn.TransformerEncoderLayer."""
    from mer_tune.method.model import TokenLayer

    torch.manual_seed(0)
    fused = TokenLayer(16, 4, dim_feedforward=32, dropout=0.3, batch_first=True)
    general = torch.nn.TransformerEncoderLayer(16, 4, 32, dropout=0.3, batch_first=True)
    general.load_state_dict(fused.state_dict())  # the same parameters, the same names
    x = torch.randn(50, 16)
    for mode in ("eval", "train"):
        fused.train(mode == "train")
        general.train(mode == "train")
        torch.manual_seed(3)
        a = fused(x)
        torch.manual_seed(3)
        b = general(x.unsqueeze(1)).squeeze(1)
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        # The same gradients too (the query and key rows get none in either).
        weight = torch.randn(50, 16)
        got = torch.autograd.grad((a * weight).sum(), list(fused.parameters()))
        want = torch.autograd.grad((b * weight).sum(), list(general.parameters()))
        for g, w in zip(got, want, strict=True):
            torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)


def test_batched_nt_xent_terms_equal_one_call_per_term_with_their_gradients():
    """Against the general path's one-term NT-Xent (its own masks, plain products)."""
    from mer_tune.method.losses import _nt_xent_general, nt_xent_terms

    rng = torch.Generator().manual_seed(0)
    views = [
        (torch.randn(12, w, generator=rng, requires_grad=True), torch.randn(12, w, generator=rng))
        for w in (8, 8, 16, 8, 16)
    ]
    ids = torch.tensor([0, 1, 2, 2, 3, 4, 5, 5, 5, 6, 7, 8])
    taus = [torch.tensor(t, requires_grad=True) for t in (0.1, 0.2, 0.1, 0.5, 0.3)]
    batched = nt_xent_terms(views, taus, ids)
    single = [_nt_xent_general(a, b, t, ids) for (a, b), t in zip(views, taus, strict=True)]
    torch.testing.assert_close(torch.stack(batched), torch.stack(single))
    leaves = [a for a, _ in views] + taus
    got = torch.autograd.grad(sum(batched), leaves)
    want = torch.autograd.grad(sum(single), leaves)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6)
    # Plain numbers, one for all terms or one each: no tensor of temperatures is built.
    for numbers in ([0.1] * 5, [0.1, 0.2, 0.1, 0.5, 0.3]):
        got = nt_xent_terms(views, numbers, ids)
        want = [_nt_xent_general(a, b, t, ids) for (a, b), t in zip(views, numbers, strict=True)]
        torch.testing.assert_close(torch.stack(got), torch.stack(want))


def _model_views(n: int, seed: int):
    """The nine terms' views as the model builds them: each modality's embedding in
    three terms, a projection against the other two, and a noised copy."""
    rng = torch.Generator().manual_seed(seed)
    emb = {m: torch.randn(n, 8, generator=rng, requires_grad=True) for m in "avt"}
    noisy = {m: emb[m] + 0.3 * torch.randn(n, 8, generator=rng) for m in "avt"}
    weight = torch.randn(8, 16, generator=rng, requires_grad=True)
    views = [(emb["a"], emb["v"]), (emb["a"], emb["t"]), (emb["v"], emb["t"])]
    for m in "avt":
        views.append((emb[m] @ weight, torch.cat([emb[o] for o in "avt" if o != m], 1)))
    views += [(emb[m], noisy[m]) for m in "avt"]
    return views, [*emb.values(), weight]


@pytest.mark.parametrize("with_ids", [False, True])
def test_shared_blocks_equal_one_call_per_term_with_their_gradients(with_ids, monkeypatch):
    """The model's nine terms share each view's own block and each pair's cross block
    (_SharedBlocksNTXent): the general path's losses and gradients, duplicates or not."""
    from mer_tune.method.losses import _nt_xent_general, _shared_blocks, nt_xent_terms

    monkeypatch.setenv("MER_TUNE_FUSED", "1")  # the fused path, whatever the caller's setting

    views, leaves = _model_views(12, seed=1)
    ids = torch.tensor([0, 1, 2, 2, 3, 4, 5, 5, 5, 6, 7, 8]) if with_ids else None
    uniques, xs, ys, _ = _shared_blocks(views, [0.1] * 9)
    assert len(uniques) == 12 and xs[:3] == (0, 0, 1)  # audio's own block serves three terms
    got = nt_xent_terms(views, [0.1] * 9, ids)
    want = [_nt_xent_general(a, b, 0.1, ids) for a, b in views]
    torch.testing.assert_close(torch.stack(got), torch.stack(want))
    weights = torch.linspace(0.5, 1.5, 9)  # unequal term weights reach every coefficient
    g_got = torch.autograd.grad((torch.stack(got) * weights).sum(), leaves, retain_graph=True)
    g_want = torch.autograd.grad((torch.stack(want) * weights).sum(), leaves)
    for g, w in zip(g_got, g_want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6)


def test_shared_blocks_take_a_mask_or_its_flat_positions_and_refuse_a_second_backward():
    """The GPU passes (n, n) masks (no read-back inside a CUDA graph), the CPU their flat
    positions: the same losses and gradients."""
    from mer_tune.method.losses import _block_masks, _SharedBlocksNTXent

    own, cross = _block_masks(10, torch.tensor([0, 1, 1, 2, 3, 4, 4, 4, 5, 6]), "cpu")
    out = []
    for masks in ((own, cross), tuple(m.view(-1).nonzero().squeeze(1) for m in (own, cross))):
        u = torch.nn.functional.normalize(
            torch.randn(3, 10, 6, generator=torch.Generator().manual_seed(1)), dim=-1
        ).requires_grad_()
        loss = _SharedBlocksNTXent.apply(u * 10**0.5, (0, 0, 1), (1, 2, 2), 10.0, *masks)
        (grad,) = torch.autograd.grad(loss.sum(), u, retain_graph=True)
        out.append((loss.detach(), grad))
        with pytest.raises(RuntimeError, match="cannot be differentiated twice"):
            torch.autograd.grad(loss.sum(), u)
    torch.testing.assert_close(out[0], out[1])


def test_terms_that_cannot_share_blocks_take_the_row_maximum_path(monkeypatch):
    """Learned or differing temperatures, one below 2/80 (whose fixed shift could
    underflow a row) and a view paired with itself keep _NTXentRows, which still
    equals the general path, at tau 0.01 too."""
    from mer_tune.method.losses import _nt_xent_general, _shared_blocks, nt_xent_terms

    monkeypatch.setenv("MER_TUNE_FUSED", "1")

    views, _ = _model_views(12, seed=2)
    assert _shared_blocks(views, [torch.tensor(0.1)] * 9) is None
    assert _shared_blocks(views, [0.1] * 8 + [0.2]) is None
    assert _shared_blocks(views, [0.01] * 9) is None
    assert _shared_blocks([(views[0][0], views[0][0])], [0.1]) is None
    assert _shared_blocks(views, [0.025] * 9) is not None
    got = nt_xent_terms(views, [0.01] * 9)
    want = [_nt_xent_general(a, b, 0.01, None) for a, b in views]
    assert torch.isfinite(torch.stack(got)).all()
    torch.testing.assert_close(torch.stack(got), torch.stack(want))


@pytest.mark.parametrize("learned", [True, False])
def test_fused_and_general_steps_give_the_same_epoch_losses(monkeypatch, learned):
    """MER_TUNE_FUSED=0 builds the general-purpose modules; both paths start from the
    same weights and draw the same random numbers, so their epoch losses agree."""
    from mer_tune.data import synthetic
    from mer_tune.data.layout import LABELLED
    from mer_tune.method import train
    from mer_tune.method.config import build_config, with_overrides

    data = synthetic.in_memory("tiny", seed=0)
    cfg = with_overrides(
        build_config(),
        {"model.hidden": 32, "optim.batch_size": 64, "loss.learn_temperature": learned},
    )
    losses = {}
    for flag in ("0", "1"):
        monkeypatch.setenv("MER_TUNE_FUSED", flag)
        torch.manual_seed(0)
        feats = train.Features(data, torch.device("cpu"))
        model = train.make_model(data, cfg.model, 0, feats.device)
        seen: list[float] = []
        pre = cfg.pretrain.model_copy(update={"epochs": 3})
        train.pretrain(
            model,
            feats,
            data.indices(LABELLED),
            pre,
            train.Steps.of(cfg),
            0,
            lambda stage, epoch, values, seen=seen: seen.append(values["pretrain_loss"]),
        )
        losses[flag] = seen
    assert type(model.specific["audio"].layers).__name__ == "TokenStack"
    assert losses["0"] == pytest.approx(losses["1"], rel=5e-5)  # 4 digits and then some


def test_cpu_dropout_keeps_each_element_with_probability_one_minus_p():
    """Dropout draws its CPU masks with torch.rand: the same keep rate and expectation
    as nn.Dropout, identity in eval mode, and every dropout of the model is one."""
    from mer_tune.method.config import build_config
    from mer_tune.method.model import MRCCL, Dropout

    drop = Dropout(0.3)
    x = torch.ones(400, 500)
    y = drop(x)
    kept = (y != 0).float().mean().item()
    assert abs(kept - 0.7) < 0.005  # 200,000 draws: s.e. 0.001
    assert torch.allclose(y[y != 0], torch.full_like(y[y != 0], 1 / 0.7))
    assert abs(y.mean().item() - 1.0) < 0.01
    drop.eval()
    assert torch.equal(drop(x), x)
    z = torch.ones(50, 40)
    out = Dropout(0.3, inplace=True)(z)
    assert out.data_ptr() == z.data_ptr() and (z == 0).any()  # in place, as asked
    model = MRCCL({"audio": 8, "visual": 8, "text": 8}, 3, build_config().model)
    plain = [m for m in model.modules() if type(m) is torch.nn.Dropout]
    assert not plain and any(isinstance(m, Dropout) for m in model.modules())


def test_nt_xent_rows_take_a_mask_or_its_flat_positions_and_refuse_a_second_backward():
    """The GPU passes the (2n, 2n) mask (no host read-back inside a CUDA graph), the CPU
    its flat positions: the same losses and gradients."""
    from mer_tune.method.losses import _NTXentRows, _positives_and_negatives

    n = 10
    targets, drop = _positives_and_negatives(n, torch.tensor([0, 1, 1, 2, 3, 4, 4, 4, 5, 6]), "cpu")
    index = targets[None, :, None].expand(3, -1, -1)
    out = []
    for mask in (drop, drop.view(-1).nonzero().squeeze(1)):
        z = torch.nn.functional.normalize(
            torch.randn(3, 2 * n, 6, generator=torch.Generator().manual_seed(1)), dim=-1
        ).requires_grad_()
        loss = _NTXentRows.apply(z, index, mask)
        (grad,) = torch.autograd.grad(loss.sum(), z, retain_graph=True)
        out.append((loss.detach(), grad))
        with pytest.raises(RuntimeError, match="cannot be differentiated twice"):
            torch.autograd.grad(loss.sum(), z)
    torch.testing.assert_close(out[0], out[1])
