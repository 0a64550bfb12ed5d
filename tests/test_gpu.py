"""The per-trial GPU memory estimate that guards fractional GPUs."""

import pytest

from mer_tune.errors import UsageError
from mer_tune.hpo.gpu import CUDA_CONTEXT, card_share, check_packing, trial_bytes
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
    est = trial_bytes(FULL_DIMS, 6, FULL_FEATURES, build_config())
    shared = card_share(FULL_FEATURES)
    # Eight full-scale trials on a 24 GiB card: each with its own copy they do not fit...
    with pytest.raises(UsageError, match="--gpus-per-trial 0.125"):
        check_packing(est, 0.125, 24 * gib)
    # ...with one copy of the features for the card, they do.
    check_packing(est - FULL_FEATURES, 0.125, 24 * gib, shared)
    assert shared + 8 * (est - FULL_FEATURES) <= 24 * gib < 8 * est
    # The refusal's hint counts the shared copy once too.
    with pytest.raises(UsageError, match=r"use --gpus-per-trial 0\.2 "):
        check_packing(est - FULL_FEATURES, 0.125, 14 * gib, shared)
