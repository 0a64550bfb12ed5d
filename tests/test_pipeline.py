import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import f1_score

from mer_tune.data.pack import load
from mer_tune.method import pipeline
from mer_tune.method.config import with_overrides


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


def test_a_pseudo_label_on_a_clip_of_no_class_counts_as_a_wrong_one(tiny_dir, fast_cfg):
    import dataclasses

    from mer_tune.data.layout import NO_CLASS

    data = load(tiny_dir)
    pool = data.split != "labelled"
    keep_all = {f"self_training.thresholds.{c}": 0.01 for c in data.classes}
    # Inductive: the pool holds unlabelled clips only (a scored one's label is known).
    cfg = with_overrides(fast_cfg, {"eval.folds": 2, "eval.inner_pool": "inductive", **keep_all})
    none = dataclasses.replace(data, hidden_labels=np.where(pool, NO_CLASS, -1))
    res = pipeline.run(none, cfg)
    assert sum(res.pseudo_added.values()) > 0 and res.pseudo_precision == 0.0
    # Truth unknown (-1) is not truth "none": no precision at all.
    unknown = dataclasses.replace(data, hidden_labels=np.full(len(data.names), -1))
    assert pipeline.run(unknown, cfg).pseudo_precision is None


@pytest.mark.parametrize("inner_pool", ["transductive", "inductive"])
def test_a_scored_fold_joins_its_models_pool_only_when_transductive(tiny_dir, fast_cfg, inner_pool):
    """eval.inner_pool: under transductive a fold model may pseudo-label the samples it is
    scored on (their labels hidden), as it may the holdout and the test names."""
    data = load(tiny_dir)
    keep_all = {f"self_training.thresholds.{c}": 0.01 for c in data.classes}
    cfg = with_overrides(fast_cfg, {"eval.folds": 2, "eval.inner_pool": inner_pool, **keep_all})
    splits = pipeline.run(data, cfg).splits
    for _, fold in splits.groupby("fold"):
        scored = set(fold.loc[fold.role == "scored", "index"])
        pseudo = set(fold.loc[fold.role == "pseudo", "index"])
        assert bool(scored & pseudo) == (inner_pool == "transductive")
        assert pseudo - scored  # the unlabelled pool either way
