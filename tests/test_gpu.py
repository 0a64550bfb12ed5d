"""The per-trial GPU memory estimate that guards fractional GPUs."""

import optuna
import pytest

from mer_tune.errors import UsageError
from mer_tune.hpo.gpu import (
    CUDA_CONTEXT,
    check_packing,
    contrastive_path,
    largest_config,
    own_copy_fraction,
    packing,
    trial_bytes,
)
from mer_tune.hpo.spaces import load_space, space_from_dict
from mer_tune.method.config import build_config

FULL_DIMS = {"audio": 1024, "visual": 768, "text": 5120}
FULL_FEATURES = 1_667_000_000  # the packed MER2024-SEMI-scale features, float16


def test_estimate_counts_the_features_the_model_and_the_batches():
    cfg = build_config()
    est = trial_bytes(FULL_DIMS, 6, FULL_FEATURES, cfg)
    assert FULL_FEATURES + CUDA_CONTEXT < est < FULL_FEATURES + 2.5 * 2**30
    # What the card showed for one such trial on an H100 (benchmarks/RESULTS.md).
    assert est > 3.43 * 2**30
    assert trial_bytes(FULL_DIMS, 6, 2 * FULL_FEATURES, cfg) - est == FULL_FEATURES
    wider = build_config({"model": {"hidden": 512}, "optim": {"batch_size": 4096}})
    assert trial_bytes(FULL_DIMS, 6, FULL_FEATURES, wider) > est


def test_a_fraction_too_small_for_a_trial_is_refused_with_the_fraction_that_fits():
    gib = 2**30
    check_packing(3 * gib, 0.25, 80 * gib)  # 20 GiB share: fits
    check_packing(100 * gib, 1, 80 * gib)  # a whole card is never refused here
    with pytest.raises(UsageError, match=r"--gpus-per-trial 0.1: .*use --gpus-per-trial 0.25"):
        check_packing(18 * gib, 0.1, 80 * gib)  # 4 trials of 18 GiB fit on 80 GiB


def test_shared_features_are_counted_once_per_card_not_once_per_trial():
    gib = 2**30
    whole = trial_bytes(FULL_DIMS, 6, FULL_FEATURES, build_config())
    own, none = packing(whole, FULL_FEATURES, share_features=False)
    assert (own, none) == (whole, 0)
    per_trial, shared = packing(whole, FULL_FEATURES, share_features=True)
    # A trial keeps all but the features, its own CUDA context included.
    assert per_trial == whole - FULL_FEATURES and per_trial > CUDA_CONTEXT
    assert shared == FULL_FEATURES + CUDA_CONTEXT  # the copy and its holder's context
    # Eight full-scale trials on a 24 GiB card: each with its own copy they do not fit...
    with pytest.raises(UsageError, match="--gpus-per-trial 0.125"):
        check_packing(whole, 0.125, 24 * gib)
    # ...with one copy of the features for the card, they do...
    check_packing(per_trial, 0.125, 24 * gib, shared)
    assert shared + 8 * per_trial <= 24 * gib < 8 * whole
    # ...but not on 16 GiB, and the hint counts the shared copy once.
    with pytest.raises(UsageError, match=r"use --gpus-per-trial 0\.167 "):
        check_packing(per_trial, 0.125, 16 * gib, shared)
    assert shared + 6 * per_trial <= 16 * gib < shared + 7 * per_trial
    # What uploads its own copy in such a search (the confirm step) gets a fraction that
    # fits a whole trial: 6 of 3.7 GiB on 24 GiB.
    assert own_copy_fraction(whole, 0.125, 24 * gib) == pytest.approx(1 / 6)
    assert own_copy_fraction(whole, 0.5, 24 * gib) == 0.5  # already enough
    assert own_copy_fraction(whole, 0.125, None) == 0.125  # card size unknown


def _peak_tensor_bytes(step) -> int:
    """The most bytes of live CPU tensors at any moment of `step()`, from the PyTorch
    profiler's memory timeline (weights, gradients, Adam's moments, batch, activations)."""
    import json
    import tempfile
    import warnings
    from pathlib import Path

    import numpy as np
    from torch.profiler import ProfilerActivity, profile

    with profile(
        activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True
    ) as prof:
        step()
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        path = Path(tmp) / "timeline.json"
        prof.export_memory_timeline(str(path), device="cpu")
        _, sizes = json.loads(path.read_text())
    return int(np.asarray(sizes, dtype=np.int64).sum(axis=1).max())


@pytest.mark.parametrize("learned", [False, True], ids=["shared-blocks", "row-wise"])
def test_the_estimate_bounds_a_training_steps_memory_at_a_large_batch(
    tiny_dir, learned, monkeypatch
):
    """At a batch of 1,024 a step's NT-Xent similarity arrays (n x n each) outweigh the
    rest: the estimate's model and batch terms still hold every tensor of the fused step,
    with one fixed temperature (shared blocks) and with learned ones (row-wise)
    (benchmarks/step_memory.py measures the general path too, at the real widths)."""
    import numpy as np
    import torch

    from mer_tune.data.layout import LABELLED
    from mer_tune.data.pack import load
    from mer_tune.hpo.gpu import step_terms
    from mer_tune.method import train
    from mer_tune.method.steps import Stepper

    monkeypatch.setenv("MER_TUNE_FUSED", "1")
    data = load(tiny_dir)
    cfg = build_config({"optim": {"batch_size": 1024}, "loss": {"learn_temperature": learned}})
    feats = train.Features(data, torch.device("cpu"))
    model = train.make_model(data, cfg.model, 0, feats.device)
    loss_fn = train.supervised_loss(model, feats, train.Steps.of(cfg), torch.Generator())
    labels = torch.from_numpy(np.array(data.labels))
    stepper = Stepper(model, feats.batch, loss_fn, cfg.optim, feats.device, labels)
    batch = np.sort(np.random.default_rng(0).choice(data.indices(LABELLED), 1024))
    stepper.epoch([batch], [batch])  # Adam's moments exist from here on
    measured = _peak_tensor_bytes(lambda: stepper.epoch([batch], [batch]))
    model_bytes, batch_bytes = step_terms(data.dims, len(data.classes), cfg)
    assert measured <= model_bytes + batch_bytes
    assert measured > 0.5 * (model_bytes + batch_bytes)  # the measurement saw the step


def test_a_search_is_packed_for_the_largest_trial_its_space_can_draw(monkeypatch):
    """The full space draws model.hidden up to 256, 2 layers and learned temperatures
    (the row-wise NT-Xent): its estimate is that trial's, above the base config's. A space
    that draws no size keeps the base config; choices compare as the config reads them."""
    monkeypatch.setenv("MER_TUNE_FUSED", "1")
    base = build_config()
    largest = largest_config(base, load_space("full", base).params)
    assert (largest.model.hidden, largest.model.layers) == (256, 2)
    assert largest.loss.learn_temperature and contrastive_path(largest) == "rows"
    assert contrastive_path(base) == "rows"  # the released learned temperatures
    fixed = build_config({"loss": {"learn_temperature": False}})
    assert contrastive_path(fixed) == "blocks"
    assert trial_bytes(FULL_DIMS, 6, FULL_FEATURES, largest) > trial_bytes(
        FULL_DIMS, 6, FULL_FEATURES, base
    )
    assert largest_config(base, load_space("thresholds", base).params) == base
    spec = {"optim.batch_size": {"type": "categorical", "choices": [512, "2048", 1024]}}
    sizes = space_from_dict({"description": "sizes", "params": spec}, base, "sizes", "test")
    assert largest_config(base, sizes.params).optim.batch_size == 2048
    # A value the config refuses (6 is no multiple of the 4 heads) is passed over.
    hidden = {"model.hidden": optuna.distributions.CategoricalDistribution([64, 6])}
    assert largest_config(base, hidden).model.hidden == 64


FAST_SETS = [  # a trial of a few seconds on the CPU
    "model.hidden=16",
    "model.heads=2",
    "pretrain.epochs=1",
    "finetune.epochs=1",
    "self_training.epochs=1",
]


@pytest.mark.slow  # seconds of waiting or a subprocess: CI runs it, `make check` not
def test_the_card_benchmarks_run_without_the_search_stack(tmp_path):
    """benchmarks/gpu_check.sh runs gpu_trial.py and card_sharing.py on a bare GPU machine
    that has PyTorch, pandas, scikit-learn, PyYAML and filelock but no Optuna, Ray, MLflow
    or click: a trial of gpu_trial.py (here on the CPU) and both scripts' imports must not
    need them."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    script = f"""
import importlib.abc, sys
class Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in {{"optuna", "ray", "mlflow", "click"}}:
            raise ImportError(f"{{name}} is not on the GPU machine")
sys.meta_path.insert(0, Absent())
sys.path.insert(0, {str(root / "benchmarks")!r})
from pathlib import Path
import card_sharing, gpu_trial
import mer_tune.hpo.card_features, mer_tune.method.train  # card_sharing's, when it runs
gpu_trial._pack(Path({str(tmp_path / "pack")!r}), "tiny")
gpu_trial._child({str(tmp_path / "pack")!r}, {FAST_SETS!r}, "cpu")
"""
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert '"estimate"' in out.stdout  # the trial ran and its estimate was taken
