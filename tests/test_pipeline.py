import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import f1_score

from mer_tune import pipeline
from mer_tune.config import with_overrides
from mer_tune.data import load


def test_pseudo_labels_use_the_threshold_of_the_predicted_class():
    probs = np.array(
        [
            [0.95, 0.05],  # class 0 at 0.95: below its 0.99 threshold
            [0.995, 0.005],  # class 0 at 0.995: kept
            [0.2, 0.8],  # class 1 at 0.8: reaches its 0.8 threshold
            [0.3, 0.7],  # class 1 at 0.7: below
        ]
    )
    keep, labels = pipeline.select_pseudo_labels(probs, np.array([0.99, 0.8]))
    assert keep.tolist() == [1, 2]
    assert labels.tolist() == [0, 1]


def test_oversampling_repeats_each_class_up_to_the_target():
    labels = np.array([0] * 10 + [1] * 3 + [2] * 50)
    pos = pipeline.oversample(labels, 20, 3, np.random.default_rng(0))
    counts = np.bincount(labels[pos], minlength=3)
    assert counts.tolist() == [20, 20, 50]  # the class above the target is left alone
    assert set(range(len(labels))) <= set(pos.tolist())  # every original sample kept
    assert len(pipeline.oversample(labels, 0, 3, np.random.default_rng(0))) == len(labels)


def test_weighted_soft_voting():
    logits = {
        "fusion": np.log([[0.9, 0.1]]),
        "audio": np.log([[0.2, 0.8]]),
        "visual": np.log([[0.5, 0.5]]),
        "text": np.log([[0.5, 0.5]]),
    }
    probs = pipeline.vote(logits, {"fusion": 0.7, "audio": 0.7, "visual": 0.0, "text": 0.0})
    assert np.allclose(probs, [[0.55, 0.45]])
    audio_only = pipeline.vote(logits, {"fusion": 0.0, "audio": 1.0, "visual": 0.0, "text": 0.0})
    assert np.allclose(audio_only, [[0.2, 0.8]])
    by_logits = pipeline.vote(
        logits, {"fusion": 1.0, "audio": 1.0, "visual": 0.0, "text": 0.0}, "logits"
    )
    assert np.allclose(by_logits.sum(1), 1.0) and by_logits[0, 0] > 0.5


def test_folds_are_stratified_and_disjoint():
    y = np.repeat(np.arange(3), [20, 10, 5])
    folds = pipeline.fold_splits(y, 5, seed=0)
    assert len(folds) == 5
    all_val = np.concatenate([va for _, va in folds])
    assert sorted(all_val.tolist()) == list(range(len(y)))
    for tr, va in folds:
        assert not set(tr) & set(va)
        assert np.bincount(y[va], minlength=3).tolist() == [4, 2, 1]


def test_tiny_run_end_to_end_scores_with_the_official_scorer(tiny_dir, fast_cfg):
    data = load(tiny_dir)
    res = pipeline.run(data, fast_cfg)
    preds = res.predictions
    assert len(preds) == int((data.split == "labelled").sum())  # each labelled sample once
    per_fold = [
        f1_score(g["label"], g["pred"], average="weighted") for _, g in preds.groupby("fold")
    ]
    assert res.fold_f1 == pytest.approx(per_fold)
    assert res.weighted_f1 == pytest.approx(np.mean(per_fold))
    probs = preds[[c for c in preds.columns if c.startswith("prob_")]].to_numpy()
    assert np.allclose(probs.sum(1), 1.0, atol=1e-5)
    assert (np.asarray(data.classes)[probs.argmax(1)] == preds["pred"]).all()
    assert sum(res.pseudo_added.values()) > 0 and res.pseudo_precision is not None
    assert {"pretrain", "finetune", "self_training", "vote"} <= set(res.seconds)


def test_same_seed_same_score_and_another_seed_differs(tiny_dir, fast_cfg):
    data = load(tiny_dir)
    a = pipeline.run(data, fast_cfg)
    b = pipeline.run(data, fast_cfg)
    assert a.weighted_f1 == b.weighted_f1
    pd.testing.assert_frame_equal(a.predictions, b.predictions)
    c = pipeline.run(data, with_overrides(fast_cfg, {"seed": 1}))
    assert not np.allclose(a.predictions.filter(like="prob_"), c.predictions.filter(like="prob_"))


def test_empty_unlabelled_pool_skips_self_training_with_a_note(tmp_path, fast_cfg):
    from conftest import write_dataset

    root = write_dataset(tmp_path / "d", n_lab=36, n_unl=0)
    res = pipeline.run(load(root), fast_cfg)
    assert any("unlabelled pool is empty" in n for n in res.notes)
    assert sum(res.pseudo_added.values()) == 0


def test_stage_keys_follow_the_data_flow(fast_cfg):
    base = pipeline.stage_keys(fast_cfg, "fp", 0)
    thr = pipeline.stage_keys(
        with_overrides(fast_cfg, {"self_training.thresholds.sad": 0.7}), "fp", 0
    )
    vote_only = pipeline.stage_keys(with_overrides(fast_cfg, {"voting.weights.text": 0.9}), "fp", 0)
    lr = pipeline.stage_keys(with_overrides(fast_cfg, {"optim.lr": 0.01}), "fp", 0)
    assert thr["finetune"] == base["finetune"] and thr["pseudo"] != base["pseudo"]
    assert vote_only == base
    assert lr["pretrain"] != base["pretrain"]
