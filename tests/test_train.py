"""Training loops: the kept weights are those of the epoch that scored best on the
selection samples."""

import numpy as np
import pytest
import torch

from mer_tune.data.pack import load
from mer_tune.method import malloc, train
from mer_tune.method.config import build_config


def test_supervised_keeps_the_epoch_the_selection_samples_score_best(tiny_dir, monkeypatch):
    data = load(tiny_dir)
    cfg = build_config({"model": {"hidden": 16, "heads": 2, "head_dims": [16]}})
    feats = train.Features(data, torch.device("cpu"))
    model = train.make_model(data, cfg.model, 0, feats.device)
    lab = data.indices("labelled")
    fit, sel = lab[:120], lab[120:]
    scripted = iter([0.2, 0.9, 0.5, 0.1])  # epoch 1 is best
    weights = []

    def score(logits, y):
        assert len(y) == len(sel)  # scored on the selection samples
        weights.append({k: v.clone() for k, v in model.state_dict().items()})
        return next(scripted)

    monkeypatch.setattr(train, "equal_vote_f1", score)
    state, info = train.supervised(
        model, feats, fit, data.labels[fit], sel, data.labels[sel],
        train.Schedule(4, train.Steps.of(cfg), seed=0, stage="finetune"),
    )  # fmt: skip
    assert info["best_epoch"] == 1 and info["history"] == [0.2, 0.9, 0.5, 0.1]
    for key, value in state.items():
        assert torch.equal(value, weights[1][key]), key
        assert torch.equal(model.state_dict()[key], value)  # the model holds the kept epoch
    assert not all(torch.equal(weights[1][k], weights[3][k]) for k in state)
    assert np.isfinite(info["best_f1"])


def test_finetuning_contrastive_terms_leave_out_the_noise_terms_when_asked(tiny_dir, monkeypatch):
    data = load(tiny_dir)
    calls = []
    real = train.add_noise
    monkeypatch.setattr(train, "add_noise", lambda *a, **k: calls.append(1) or real(*a, **k))
    lab = data.indices("labelled")
    for finetune_noise in (True, False):
        calls.clear()
        cfg = build_config(
            {
                "model": {"hidden": 16, "heads": 2, "head_dims": [16]},
                "loss": {"finetune_contrastive": 1.0, "finetune_noise": finetune_noise},
            }
        )
        feats = train.Features(data, torch.device("cpu"))
        model = train.make_model(data, cfg.model, 0, feats.device)
        train.supervised(
            model, feats, lab[:60], data.labels[lab[:60]], lab[60:80], data.labels[lab[60:80]],
            train.Schedule(1, train.Steps.of(cfg), seed=0, stage="finetune"),
        )  # fmt: skip
        assert bool(calls) == finetune_noise


def test_inference_maps_its_batches_and_restores_the_training_threshold(tiny_dir, monkeypatch):
    """predict lowers glibc's mmap threshold to 1 MiB for its batches (full-scale memory)
    and restores the one tune_malloc set for training, whatever that was."""
    calls = []

    class FakeLibc:
        def mallopt(self, param, value):
            calls.append((param, value))
            return 1

    monkeypatch.setattr(malloc.ctypes, "CDLL", lambda name: FakeLibc())
    # Put back what this process had (a CLI test may have tuned it for real).
    monkeypatch.setattr(malloc, "_training_mmap_threshold", malloc._training_mmap_threshold)
    data = load(tiny_dir)
    cfg = build_config({"model": {"hidden": 16, "heads": 2, "head_dims": [16]}})
    feats = train.Features(data, torch.device("cpu"))
    model = train.make_model(data, cfg.model, 0, feats.device)
    for training in (malloc.MMAP_THRESHOLD, 2 << 20):
        monkeypatch.setattr(malloc, "_libc", None)
        malloc.tune_malloc(training, 64 << 20)
        assert calls == [(-3, training), (-1, 64 << 20)]  # M_MMAP_ and M_TRIM_THRESHOLD
        calls.clear()
        logits = train.predict(model, feats, np.arange(10))
        assert logits["fusion"].shape[0] == 10
        assert calls == [(-3, 1 << 20), (-3, training)]
        calls.clear()


def test_the_released_classification_loss_trains_the_weighted_vote_and_weighted_heads():
    torch.manual_seed(0)
    logits = {h: torch.randn(5, 6) for h in train.HEADS}
    y = torch.tensor([0, 1, 2, 3, 5])
    cfg = build_config({})
    weights = {"audio": 0.7, "visual": 0.4, "text": 0.3, "fusion": 0.7}
    assert cfg.self_training.confidence_weights == weights and cfg.loss.supervised == "released"

    def ce(z):  # cross-entropy written out: mean over rows of -log softmax at the label
        z = z.double()
        return float(-(z[range(5), y] - z.logsumexp(1)).mean())

    vote = ce(sum(weights[h] * logits[h] for h in train.HEADS))
    heads = sum(ce(weights[h] * logits[h]) for h in train.HEADS) / 4
    got = train.classification_loss(logits, y, train.Steps.of(cfg)).item()
    assert abs(got - (vote + heads)) < 1e-5
    mean_heads = train.Steps.of(build_config({"loss": {"supervised": "mean_heads"}}))
    plain = sum(ce(logits[h]) for h in train.HEADS) / 4
    assert abs(train.classification_loss(logits, y, mean_heads).item() - plain) < 1e-5
    # Contrastive pretraining's steps carry no head weights: released needs them.
    with pytest.raises(ValueError, match="heads' weights"):
        train.classification_loss(logits, y, train.Steps.of(cfg, supervised=False))
