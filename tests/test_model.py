import math

import numpy as np
import torch

from mer_tune.method.config import ModelConfig, NoiseConfig
from mer_tune.method.model import MRCCL, add_noise, ddpm_noise_std, nt_xent


def reference_nt_xent(z1, z2, tau):
    """NT-Xent written out term by term, as in the SimCLR paper."""
    z = np.concatenate([z1, z2])
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    n2 = len(z)
    n = n2 // 2
    total = 0.0
    for i in range(n2):
        pos = (i + n) % n2
        num = math.exp(float(z[i] @ z[pos]) / tau)
        den = sum(math.exp(float(z[i] @ z[k]) / tau) for k in range(n2) if k != i)
        total += -math.log(num / den)
    return total / n2


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


def test_attention_never_mixes_samples_of_a_batch():
    torch.manual_seed(0)
    model = MRCCL(
        {"audio": 6, "visual": 4, "text": 5}, 6, ModelConfig(hidden=8, heads=2, head_dims=[8])
    ).eval()
    x = {m: torch.randn(7, d) for m, d in {"audio": 6, "visual": 4, "text": 5}.items()}
    whole = model.logits(model.embed(x))["fusion"]
    alone = model.logits(model.embed({m: v[:1] for m, v in x.items()}))["fusion"]
    assert torch.allclose(whole[:1], alone, atol=1e-5)
