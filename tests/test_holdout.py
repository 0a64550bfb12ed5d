"""The outer holdout, inner epoch selection and the verdict's statistics (no Ray)."""

import numpy as np
import pytest
from sklearn.metrics import f1_score

from mer_tune.data.layout import HOLDOUT, LABELLED
from mer_tune.data.pack import load
from mer_tune.errors import UsageError
from mer_tune.hpo import holdout as outer
from mer_tune.hpo import stats
from mer_tune.method import pipeline
from mer_tune.method.config import with_overrides


def test_holdout_is_stratified_seeded_and_hidden_from_trials(tiny_dir):
    data = load(tiny_dir)
    ho = outer.choose(data, 0.2, seed=5, folds=2)
    again = outer.choose(data, 0.2, seed=5, folds=2)
    other = outer.choose(data, 0.2, seed=6, folds=2)
    assert ho.idx.tolist() == again.idx.tolist() and ho.idx.tolist() != other.idx.tolist()
    counts = np.bincount(data.labels[ho.idx], minlength=len(data.classes))
    full = np.bincount(data.labels[data.indices(LABELLED)], minlength=len(data.classes))
    assert (counts >= 1).all()
    assert np.abs(counts - np.round(full * 0.2)).max() <= 1  # every class in proportion
    seen = outer.withhold(data, ho)
    assert (seen.labels[ho.idx] == -1).all() and (seen.split[ho.idx] == HOLDOUT).all()
    assert not set(seen.indices(LABELLED)) & set(ho.idx)
    assert seen.fingerprint != data.fingerprint  # cached stages never mix the two
    assert (ho.labels == data.labels[ho.idx]).all()  # the driver keeps the labels
    assert len(outer.choose(data, 0.0, 0, 2)) == 0


@pytest.mark.parametrize("fraction", [-0.1, 0.51, 0.7])
def test_holdout_fraction_outside_0_to_half_is_refused(tiny_dir, fraction):
    with pytest.raises(UsageError, match=r"--holdout .*: must be between 0 and 0.5"):
        outer.choose(load(tiny_dir), fraction, 0, 2)


def test_a_class_too_small_for_holdout_and_folds_names_the_class(tmp_path):
    from conftest import write_dataset

    # 6 classes in turn over 30 samples: 5 of each.
    data = load(write_dataset(tmp_path / "d", n_lab=30))
    with pytest.raises(UsageError) as err:
        outer.choose(data, 0.2, 0, folds=5)
    message = str(err.value)
    assert "class 'neutral' has 5 labelled samples" in message
    assert "leaving 4" in message and "need at least 5" in message
    outer.choose(data, 0.2, 0, folds=2)  # two folds fit


def test_inner_selection_never_lets_the_scored_fold_pick_the_epoch(tiny_dir, fast_cfg):
    data = load(tiny_dir)
    picked_on: list[set] = []
    real = pipeline.train.supervised

    def spy(model, feats, tr, ty, sel, sy, *args, **kw):
        picked_on.append(set(np.asarray(sel).tolist()))
        return real(model, feats, tr, ty, sel, sy, *args, **kw)

    def roles(res, fold):
        rows = res.splits[res.splits["fold"] == fold]
        return {r: set(rows[rows["role"] == r]["index"]) for r in ("fit", "select", "scored")}

    pipeline.train.supervised = spy
    try:
        inner = pipeline.run(data, fast_cfg)
        calls = len(picked_on)
        scored = pipeline.run(data, with_overrides(fast_cfg, {"eval.select_on": "scored"}))
    finally:
        pipeline.train.supervised = real
    folds = [roles(inner, k) for k in (0, 1)]
    for role in folds:
        assert role["select"] and not role["select"] & role["scored"]
        assert not role["fit"] & role["select"] and not role["fit"] & role["scored"]
    # Every epoch choice (finetune and retrain of both folds) used a fold's inner slice.
    assert calls >= 2
    assert all(sel in [f["select"] for f in folds] for sel in picked_on[:calls])
    # scored: MERTools' protocol, the scored fold picks the epoch
    for k in (0, 1):
        role = roles(scored, k)
        assert role["select"] == role["scored"]
    assert all(sel in [roles(scored, k)["scored"] for k in (0, 1)] for sel in picked_on[calls:])


def test_repeats_average_different_splits_and_share_pretraining(tiny_dir, fast_cfg):
    data = load(tiny_dir)
    cache = pipeline.MemoryCache()
    calls = []
    real = cache.get_or_compute

    def counting(stage, key, compute):
        calls.append(stage)
        return real(stage, key, compute)

    cache.get_or_compute = counting
    cfg = with_overrides(fast_cfg, {"eval.repeats": 2})
    res = pipeline.run(data, cfg, cache=cache)
    assert len(res.fold_f1) == 4 and res.weighted_f1 == pytest.approx(np.mean(res.fold_f1))
    scored = res.splits[res.splits.role == "scored"]
    first = set(scored[scored.fold == 0]["index"])
    assert first != set(scored[scored.fold == 2]["index"])  # repeat 2 splits differently
    assert len(cache._store) == 1 + 4 + 4  # one pretraining for all four folds


def test_weighted_f1_of_resamples_equals_sklearn():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 60)
    pred = np.where(rng.random(60) < 0.6, y, rng.integers(0, 5, 60))  # class 4 never true
    rows = stats.resample_rows(60, 50, rng)
    fast = stats.weighted_f1_resampled(y, pred, rows)
    slow = [f1_score(y[r], pred[r], average="weighted", zero_division=0) for r in rows]
    assert fast == pytest.approx(slow)
    assert fast[0] == pytest.approx(f1_score(y, pred, average="weighted"))


def _preds(y, accuracy, rng):
    wrong = (y + 1 + rng.integers(0, 3, len(y))) % 4
    return np.where(rng.random(len(y)) < accuracy, y, wrong)


@pytest.mark.parametrize(
    "acc_winner, outcome",
    [(0.95, "gain"), (0.70, "no gain"), (0.45, "loss")],
)
def test_verdict_on_constructed_scores(acc_winner, outcome):
    rng = np.random.default_rng(1)
    y = rng.integers(0, 4, 400)
    base = _preds(y, 0.7, np.random.default_rng(2))
    cand = _preds(y, acc_winner, np.random.default_rng(3)) if outcome != "no gain" else base.copy()
    if outcome == "no gain":  # a few changed predictions: within the noise
        flip = rng.choice(400, 6, replace=False)
        cand[flip] = y[flip]
    gain = stats.paired_difference(y, [cand], [base], seed=0)
    outer_f1 = {3: f1_score(y, cand, average="weighted")}
    v = stats.decide({3: gain}, outer_f1, baseline=0)
    assert v.outcome == outcome
    assert v.low <= v.gain <= v.high
    if outcome == "gain":
        assert v.adopted == 3 and v.text.startswith("trial 3 beats the paper's values by +")
    else:
        assert v.adopted == 0 and "best_config.yaml keeps the paper's values" in v.text
    again = stats.paired_difference(y, [cand], [base], seed=0)
    assert again == gain  # deterministic for a seed


def test_paired_interval_narrower_than_unpaired_and_spans_seeds():
    rng = np.random.default_rng(4)
    y = rng.integers(0, 4, 300)
    base = _preds(y, 0.7, rng)
    cand = base.copy()
    cand[:15] = y[:15]  # the candidate fixes a handful of samples
    gain, low, high = stats.paired_difference(y, [cand], [base], seed=0)
    _, lo_a, hi_a = stats.score_interval(y, [cand], seed=0)
    assert gain > 0 and (high - low) < (hi_a - lo_a) / 2
    # several seeds: the interval also covers the spread between them
    seeds = [cand, base]
    mean, lo_s, hi_s = stats.score_interval(y, seeds, seed=0)
    assert lo_s < f1_score(y, base, average="weighted") < hi_s and lo_s < mean < hi_s


def test_the_verdict_adopts_the_best_candidate_whose_gain_is_clear():
    # trial 5 scores best on the holdout but its gain is not clear; trial 3's is
    gains = {3: (0.05, 0.01, 0.09), 5: (0.06, -0.01, 0.12)}
    v = stats.decide(gains, {3: 0.80, 5: 0.82}, baseline=0)
    assert (v.outcome, v.adopted, v.winner, v.gain) == ("gain", 3, 3, 0.05)
    assert v.text.startswith("trial 3 beats the paper's values by +0.050")
    # no baseline to compare with: no verdict, and nothing adopted on the holdout alone
    none = stats.decide({}, {3: 0.80}, baseline=None)
    assert none.outcome == "no baseline" and none.adopted is None


def test_holm_tests_the_smallest_p_at_alpha_over_k_and_keeps_the_order():
    adjusted = stats.holm({1: 0.01, 2: 0.04, 3: 0.03})
    assert adjusted[1] == pytest.approx((0.03, 1 - 0.05 / 3))
    assert adjusted[3] == pytest.approx((0.06, 1 - 0.05 / 2))
    # never below an earlier step's p; the level then widens to match it
    assert adjusted[2] == pytest.approx((0.06, 1 - 0.05 * 0.04 / 0.06))
    assert stats.holm({7: 0.6, 8: 0.7})[8][0] == 1.0  # capped at one


def test_a_gain_clear_alone_but_not_among_three_candidates_is_not_adopted():
    # Clear at 95% on its own, but one of three: Holm tests it at 0.05 / 3.
    found = stats.Gain(0.03, 0.002, 0.06, p=0.04, p_adjusted=0.12,
                       adjusted_low=-0.004, adjusted_high=0.068)  # fmt: skip
    others = {t: stats.Gain(0.0, -0.03, 0.03, 0.9, 1.0, -0.04, 0.04) for t in (4, 5)}
    v = stats.decide({3: found, **others}, {3: 0.82, 4: 0.80, 5: 0.79}, baseline=0)
    assert (v.outcome, v.adopted, v.winner) == ("no gain", 0, 3)
    assert "adjusted for 3 candidates: p = 0.120" in v.text
    assert v.to_dict()["p_adjusted"] == 0.12 and v.to_dict()["candidates"] == 3


def test_the_p_value_agrees_with_the_interval_for_one_candidate():
    rng = np.random.default_rng(5)
    y = rng.integers(0, 4, 300)
    base = _preds(y, 0.7, rng)
    for fixed in (0, 6, 30):
        cand = base.copy()
        cand[:fixed] = y[:fixed]
        gain, draws = stats.paired_draws(y, [cand], [base], seed=0)
        low, high = stats.interval(draws)
        assert (stats.p_value(draws) < 0.05) == (low > 0 or high < 0)


def test_the_adjusted_verdict_adopts_a_null_candidate_at_most_five_percent_of_the_time():
    """Searches where no candidate beats the baseline in truth: each of three candidates
    predicts as well as the baseline, with its own errors. The unadjusted rule adopts one
    more often; the adjusted one at most about 5% of the time."""
    rng = np.random.default_rng(11)
    adjusted = unadjusted = 0
    searches = 120
    for s in range(searches):
        y = rng.integers(0, 4, 200)
        base = _preds(y, 0.75, rng)
        draws = {}
        for t in (1, 2, 3):
            cand = base.copy()
            redo = rng.random(len(y)) < 0.3  # its own errors on a third of the samples
            cand[redo] = _preds(y[redo], 0.75, rng)
            draws[t] = stats.paired_draws(y, [cand], [base], seed=s, replicates=400)
        gains = stats.adjusted_gains(draws)
        outer = {t: g.gain for t, g in gains.items()}
        adjusted += stats.decide(gains, outer, baseline=0).outcome == "gain"
        plain = {t: (g.gain, g.low, g.high) for t, g in gains.items()}
        unadjusted += stats.decide(plain, outer, baseline=0).outcome == "gain"
    assert adjusted <= unadjusted
    assert adjusted / searches <= 0.07


def _fold_votes(y, folds, agree, rng, classes=4):
    """Each fold model's vote: right on a share of samples, shared by every fold model
    where `agree`, its own elsewhere."""
    common = np.eye(classes)[_preds(y, 0.75, rng)]
    votes = np.stack([np.eye(classes)[_preds(y, 0.75, rng)] for _ in range(folds)])
    votes = np.where(agree[None, :, None], common[None], votes)
    jitter = rng.uniform(0, 1e-3, votes.shape)  # no exact ties between classes
    return (votes * 0.9 + 0.1 / classes + jitter).astype(np.float32), np.zeros(classes, np.float32)


def test_the_verdicts_interval_spans_the_fold_models_training_randomness():
    rng = np.random.default_rng(8)
    y = rng.integers(0, 4, 300)
    all_agree = np.ones(len(y), bool)
    a, b = _fold_votes(y, 5, all_agree, rng), _fold_votes(y, 5, all_agree, rng)
    # Fold models that agree: the draws are the samples' resampling alone.
    gain, draws = stats.paired_draws_folds(y, a, b, seed=0)
    plain_gain, plain = stats.paired_draws(y, [a[0][0].argmax(1)], [b[0][0].argmax(1)], seed=0)
    assert gain == pytest.approx(plain_gain) and np.allclose(draws, plain)
    # Fold models that disagree on a third of the samples: a wider interval.
    some = rng.random(len(y)) < 0.66
    a, b = _fold_votes(y, 5, some, rng), _fold_votes(y, 5, some, rng)
    gain, draws = stats.paired_draws_folds(y, a, b, seed=0)
    ensemble = [v[0].astype(float).mean(0).argmax(1) for v in (a, b)]
    assert gain == pytest.approx(f1_score(y, ensemble[0], average="weighted")
                                 - f1_score(y, ensemble[1], average="weighted"))  # fmt: skip
    _, plain = stats.paired_draws(y, [ensemble[0]], [ensemble[1]], seed=0)
    width = np.subtract(*stats.interval(draws)[::-1])
    assert width > 1.05 * np.subtract(*stats.interval(plain)[::-1])


def test_an_adjusted_p_below_5pc_comes_with_an_adjusted_interval_without_zero():
    rng = np.random.default_rng(12)
    seen = 0
    for family in range(40):
        draws = {t: (0.0, rng.normal(rng.uniform(0, 0.08), 0.02, 2000)) for t in (1, 2, 3)}
        for t, g in stats.adjusted_gains(draws).items():
            if g.p_adjusted < 0.05:  # the p-value is the stricter one at the margin
                seen += 1
                assert g.adjusted_low > 0, (family, t)
            assert g.clear_gain == (g.p_adjusted < 0.05), (family, t)
    assert 10 < seen < 110  # both outcomes occur


def test_a_gain_whose_draws_lie_below_zero_is_never_adopted():
    # The point estimate says +0.01, the resamples say worse: the draws' side decides.
    draws = np.concatenate([np.full(1990, -0.05), np.full(10, 0.01)])
    gains = stats.adjusted_gains({1: (0.01, draws)})
    v = stats.decide(gains, {1: 0.8}, baseline=0)
    assert v.adopted == 0 and v.outcome == "loss"
