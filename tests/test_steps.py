"""Training steps: the epoch's loss is summed without per-step reads, a diverging config
stops with a clear error, and a GPU's noise needs no host round trip."""

import numpy as np
import pytest
import torch

from mer_tune.method.config import NoiseConfig, OptimConfig
from mer_tune.method.losses import add_noise
from mer_tune.method.steps import Stepper


def test_an_epoch_returns_the_size_weighted_sum_of_its_batch_losses():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    feats = torch.randn(10, 3)
    seen = []

    def loss_fn(x, y, ids):
        loss = (model(x["a"]).squeeze(1) - y).pow(2).mean()
        seen.append(loss.item())
        return loss

    targets = torch.arange(10, dtype=torch.float32)
    stepper = Stepper(
        model, lambda idx: {"a": feats[idx]}, loss_fn, OptimConfig(batch_size=4),
        torch.device("cpu"), targets,
    )  # fmt: skip
    batches = [np.array([0, 1, 2, 3]), np.array([4, 5, 6, 7]), np.array([8, 9])]
    before = model.weight.detach().clone()
    total, last = stepper.epoch(batches, batches)
    assert total.item() == pytest.approx(4 * seen[0] + 4 * seen[1] + 2 * seen[2], rel=1e-6)
    assert last.item() == pytest.approx(seen[2])
    assert not torch.equal(model.weight, before)  # three Adam steps were taken


def test_noise_without_a_generator_draws_on_the_inputs_device_reproducibly():
    x = torch.ones(8, 5)
    torch.manual_seed(3)
    first = add_noise(x, "text", NoiseConfig(kind="ddpm"), None)
    torch.manual_seed(3)
    again = add_noise(x, "text", NoiseConfig(kind="ddpm"), None)
    assert first.device == x.device and torch.equal(first, again)
    assert not torch.equal(first, x)
