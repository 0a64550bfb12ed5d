"""The stages of a fold and their table: pseudo-labels, oversampling, voting, the cache
keys built from the table, and a check that each stage reads only what its key holds."""

import numpy as np
import pytest

from mer_tune.data.pack import load
from mer_tune.hpo.cache import key_digest
from mer_tune.method import fold, pipeline, stages, voting
from mer_tune.method.config import HEADS, Config, SelfTrainingConfig, with_overrides
from mer_tune.method.stages import step_of


def test_pseudo_labels_use_the_threshold_of_the_predicted_class():
    probs = np.array(
        [
            [0.95, 0.05],  # class 0 at 0.95: below its 0.99 threshold
            [0.995, 0.005],  # class 0 at 0.995: kept
            [0.2, 0.8],  # class 1 at 0.8: reaches its 0.8 threshold
            [0.3, 0.7],  # class 1 at 0.7: below
        ]
    )
    keep, labels = voting.select_pseudo_labels(probs, np.array([0.99, 0.8]))
    assert keep.tolist() == [1, 2]
    assert labels.tolist() == [0, 1]


def test_weighted_logits_confidence_accepts_what_the_mean_of_probabilities_rejects():
    # Four heads each 0.95 sure of class 0 (of 6): the released model's weighted sum of
    # logits is far sharper than the mean of the probabilities.
    logit = np.log(0.95 / 0.01)
    head = np.array([[logit, 0, 0, 0, 0, 0]])
    logits = {h: head for h in HEADS}
    paper = np.array([0.99] * 4 + [0.85] * 2)

    def conf(kind, **weights):
        cfg = SelfTrainingConfig(confidence=kind, **weights)
        return voting.confidence(logits, cfg)

    assert conf("equal_probs").max() == pytest.approx(0.95)
    assert conf("weighted_probs").max() == pytest.approx(0.95)
    assert conf("weighted_logits").max() == pytest.approx(0.99965, abs=5e-5)
    assert len(voting.select_pseudo_labels(conf("equal_probs"), paper)[0]) == 0
    assert len(voting.select_pseudo_labels(conf("weighted_logits"), paper)[0]) == 1
    # The weighted mean follows the weights: a head with weight 0 has no say.
    split = dict(logits, audio=np.array([[0, logit, 0, 0, 0, 0]]))
    only_audio = {"audio": 1.0, "visual": 0.0, "text": 0.0, "fusion": 0.0}
    cfg = SelfTrainingConfig(confidence="weighted_probs", confidence_weights=only_audio)
    assert voting.confidence(split, cfg).argmax() == 1


def test_the_decision_stage_shifts_the_vote_by_class_and_zero_leaves_it_alone():
    probs = np.array([[0.5, 0.3, 0.2], [0.2, 0.45, 0.35]])
    assert voting.decide(probs, np.zeros(3)) is probs
    moved = voting.decide(probs, np.array([0.0, 0.0, 0.6]))
    np.testing.assert_allclose(moved.sum(axis=1), 1.0)
    assert list(moved.argmax(axis=1)) == [0, 2]  # the second sample crosses to class 2
    # An offset is a log-odds shift: class 2 against class 1 grows by exactly e^0.6.
    ratio = (moved[:, 2] / moved[:, 1]) / (probs[:, 2] / probs[:, 1])
    np.testing.assert_allclose(ratio, np.exp(0.6))


def test_decision_offsets_are_checked_and_expand_over_the_data_s_classes():
    from mer_tune.errors import UsageError
    from mer_tune.hpo.spaces import load_space

    with pytest.raises(UsageError, match=r"decision.offsets.sad = 7.0 is outside \[-5, 5\]"):
        with_overrides(Config(), {"decision.offsets.sad": 7.0})
    with pytest.raises(UsageError, match="decision.offsets.bored is not a class"):
        with_overrides(Config(), {"decision.offsets.bored": 1.0})
    three = with_overrides(Config(), {"data.classes": ["calm", "tense", "sad"]})
    sp = load_space("decision", three)
    assert list(sp.params) == [f"decision.offsets.{c}" for c in ["calm", "tense", "sad"]]
    assert set(sp.defaults(three).values()) == {0.0}  # the plain vote first
    assert step_of("decision.offsets.sad") == "voting"


def test_oversampling_repeats_each_class_up_to_the_target():
    labels = np.array([0] * 10 + [1] * 3 + [2] * 50)
    pos = stages.oversample(labels, 20, 3, np.random.default_rng(0))
    counts = np.bincount(labels[pos], minlength=3)
    assert counts.tolist() == [20, 20, 50]  # the class above the target is left alone
    assert set(range(len(labels))) <= set(pos.tolist())  # every original sample kept
    assert len(stages.oversample(labels, 0, 3, np.random.default_rng(0))) == len(labels)


def test_weighted_soft_voting():
    logits = {
        "fusion": np.log([[0.9, 0.1]]),
        "audio": np.log([[0.2, 0.8]]),
        "visual": np.log([[0.5, 0.5]]),
        "text": np.log([[0.5, 0.5]]),
    }
    probs = voting.vote(logits, {"fusion": 0.7, "audio": 0.7, "visual": 0.0, "text": 0.0})
    assert np.allclose(probs, [[0.55, 0.45]])
    audio_only = voting.vote(logits, {"fusion": 0.0, "audio": 1.0, "visual": 0.0, "text": 0.0})
    assert np.allclose(audio_only, [[0.2, 0.8]])
    by_logits = voting.vote(
        logits, {"fusion": 1.0, "audio": 1.0, "visual": 0.0, "text": 0.0}, "logits"
    )
    assert np.allclose(by_logits.sum(1), 1.0) and by_logits[0, 0] > 0.5


def test_stage_keys_follow_the_data_flow(fast_cfg):
    base = stages.stage_keys(fast_cfg, "fp", 0)
    thr = stages.stage_keys(
        with_overrides(fast_cfg, {"self_training.thresholds.sad": 0.7}), "fp", 0
    )
    vote_only = stages.stage_keys(with_overrides(fast_cfg, {"voting.weights.text": 0.9}), "fp", 0)
    lr = stages.stage_keys(with_overrides(fast_cfg, {"optim.lr": 0.01}), "fp", 0)
    assert thr["finetune"] == base["finetune"] and thr["pseudo"] != base["pseudo"]
    assert vote_only == base
    assert lr["pretrain"] != base["pretrain"]


def test_key_changes_with_any_upstream_value_and_only_then(fast_cfg):
    base = stages.stage_keys(fast_cfg, "fp", 0)
    for path, value in [
        ("model.hidden", 32),
        ("noise.kind", "mask"),
        ("optim.lr", 0.01),
        ("seed", 5),
    ]:
        changed = stages.stage_keys(with_overrides(fast_cfg, {path: value}), "fp", 0)
        for stage in ("pretrain", "finetune", "pseudo"):
            assert key_digest(stage, changed[stage]) != key_digest(stage, base[stage]), (
                path,
                stage,
            )
    other_data = stages.stage_keys(fast_cfg, "other", 0)
    assert key_digest("pretrain", other_data["pretrain"]) != key_digest(
        "pretrain", base["pretrain"]
    )
    other_fold = stages.stage_keys(fast_cfg, "fp", 1)
    assert other_fold["pretrain"] == base["pretrain"] and other_fold["finetune"] != base["finetune"]
    over = stages.stage_keys(with_overrides(fast_cfg, {"oversample.target": 10}), "fp", 0)
    assert over["pretrain"] == base["pretrain"] and over["finetune"] != base["finetune"]


class _Recording:
    """A Config that notes which of its top-level sections are read, and by which stage."""

    def __init__(self, cfg: Config, log: list, stage: list):
        object.__setattr__(self, "_cfg", cfg)
        object.__setattr__(self, "_log", log)
        object.__setattr__(self, "_stage", stage)

    def __getattr__(self, name):
        section = {"threshold_of": "self_training"}.get(name, name)
        if section in type(self._cfg).model_fields:
            self._log.append((self._stage[-1], section))
        return getattr(self._cfg, name)


class _StageTracking(pipeline.MemoryCache):
    def __init__(self, stage: list):
        super().__init__()
        self.stage = stage

    def get_or_compute(self, stage, key, compute):
        self.stage.append(stage)
        try:
            return super().get_or_compute(stage, key, compute)
        finally:
            self.stage.pop()


def test_each_stage_reads_exactly_the_config_sections_its_cache_key_holds(tiny_dir, fast_cfg):
    log: list = []
    stage = ["fold"]
    cfg = _Recording(fast_cfg, log, stage)
    pipeline.run(load(tiny_dir), cfg, cache=_StageTracking(stage))
    read: dict[str, set] = {}
    for who, section in log:
        read.setdefault(who, set()).add(section)
    for name, st in stages.STAGES.items():
        # nothing a stage reads is missing from its key, and it reads every section it declares
        assert read[name] <= stages.key_sections(name), (name, read[name])
        declared = {r.split(".")[0] for r in st.reads}
        assert declared - {"data", "seed"} <= read[name] | read["fold"], name
    # outside the stages: the fold split (eval, seed) feeds finetuning; whether the pseudo
    # stage runs at all (self_training.enabled, rounds) is in its own key; then the vote
    fold_level = read["fold"] - {"voting", "self_training"}
    assert fold_level <= stages.key_sections("finetune"), fold_level
    assert "self_training" in stages.key_sections("pseudo")
    assert "voting" not in set().union(*(read[s] for s in stages.STAGES))


@pytest.mark.parametrize(
    "key, step",
    [
        ("voting.weights.text", "voting"),
        ("self_training.thresholds.sad", "thresholds"),
        ("self_training.rounds", "thresholds"),
        ("self_training.init", "thresholds"),
        ("self_training.confidence_weights.text", "upstream"),
        ("optim.lr", "upstream"),
        ("oversample.target", "upstream"),
        ("noise.timesteps.audio", "upstream"),
    ],
)
def test_the_staged_steps_follow_the_stage_table(key, step):
    assert step_of(key) == step


def test_every_config_section_belongs_to_a_stage_or_the_vote():
    sections = set(Config.model_fields)
    covered = set().union(*(stages.key_sections(s) for s in stages.STAGES)) | set(stages.VOTE_READS)
    assert sections == covered


def test_each_round_relabels_the_pool_with_the_retrained_model(tiny_dir, fast_cfg, monkeypatch):
    seen = []
    real = voting.select_pseudo_labels

    def spy(conf, thresholds):
        seen.append(conf.log_doubt.copy())
        return real(conf, thresholds)

    monkeypatch.setattr(fold, "select_pseudo_labels", spy)
    cfg = with_overrides(fast_cfg, {"self_training.rounds": 2, "eval.folds": 2})
    res = pipeline.run(load(tiny_dir), cfg)
    assert len(seen) == 4  # two rounds in each of two folds
    assert not np.allclose(seen[0], seen[1])  # round 2 saw the retrained model's view
    assert len(res.pseudo_by_round) == 2
    assert res.pseudo_by_round[-1] == res.pseudo_added  # the last round's labels stay
    assert sum(res.pseudo_by_round[0].values()) > 0


@pytest.mark.parametrize(
    "searched, upto",
    [
        # thresholds: pretrain and finetune are shared
        ({"self_training.thresholds.sad", "self_training.confidence"}, "finetune"),
        # the heads' weights scale their logits in the released finetuning loss
        ({"self_training.confidence_weights.audio"}, "pretrain"),
        ({"self_training"}, "pretrain"),  # a whole section: every key in it
        ({"voting", "decision"}, "pseudo"),  # every trained stage is shared
        ({"oversample"}, "pretrain"),
        ({"noise"}, None),  # pretraining reads the noise: nothing is shared
        ({"self_training.rounds", "optim.lr"}, None),
    ],
)
def test_the_shared_stages_end_before_the_first_stage_a_searched_section_changes(searched, upto):
    assert stages.shared_upto(searched) == upto


def test_confidence_near_one_is_resolved_and_a_threshold_of_one_keeps_nothing():
    # Logit gaps of 20.7, 23 and 27.6 over five other classes: confidences 1 - 5e-9,
    # 1 - 5e-10 and 1 - 5e-12, all exactly 1.0 as float32 probabilities.
    gaps = np.array([np.log(1e9), np.log(1e10), np.log(1e12)])
    head = np.zeros((3, 6), np.float32)
    head[:, 0] = gaps
    for kind in ("weighted_logits", "weighted_probs", "equal_probs"):
        st = SelfTrainingConfig(confidence=kind)
        # Under weighted_logits the heads' weights sum to 2.1: scale the logits back.
        scale = 1 / 2.1 if kind == "weighted_logits" else 1.0
        logits = {h: head * np.float32(scale) for h in HEADS}
        assert (voting.confidence(logits, st).max(axis=1) == 1.0).all()  # saturated
        conf = voting.doubt(logits, st)
        kept = {
            t: voting.select_pseudo_labels(conf, np.full(6, t))[0].tolist()
            for t in (1 - 1e-8, 1 - 1e-9, 1 - 1e-11, 1 - 1e-13, 1.0)
        }
        assert kept == {
            1 - 1e-8: [0, 1, 2],
            1 - 1e-9: [1, 2],
            1 - 1e-11: [2],
            1 - 1e-13: [],
            1.0: [],
        }, kind
    # From saturated probabilities too, a threshold of 1 keeps nothing.
    assert len(voting.select_pseudo_labels(np.array([[1.0, 0.0]]), np.array([1.0, 1.0]))[0]) == 0


class _Counting(pipeline.MemoryCache):
    def __init__(self):
        super().__init__()
        self.computed: list[str] = []

    def get_or_compute(self, stage, key, compute):
        def counted():
            self.computed.append(stage)
            return compute()

        return super().get_or_compute(stage, key, counted)


def test_thresholds_that_keep_the_same_pseudo_labels_share_one_retrained_stage(tiny_dir, fast_cfg):
    data = load(tiny_dir)
    cache = _Counting()
    low = with_overrides(fast_cfg, {"self_training.thresholds.surprise": 0.8})
    first = pipeline.run(data, low, cache=cache)
    assert cache.computed.count("pseudo") == 2  # one retraining per fold
    # Surprise's confidences are all below 0.8 or above 0.81 here: the same set is kept.
    probe = pipeline.run(data, with_overrides(low, {"self_training.thresholds.surprise": 0.81}))
    assert probe.pseudo_added == first.pseudo_added
    cache.computed.clear()
    again = pipeline.run(data, with_overrides(low, {"self_training.thresholds.surprise": 0.81}),
                         cache=cache)  # fmt: skip
    assert cache.computed == []  # nothing trained
    assert again.weighted_f1 == first.weighted_f1
    # A threshold that changes the set retrains.
    pipeline.run(data, with_overrides(low, {"self_training.thresholds.neutral": 0.5}), cache=cache)
    assert cache.computed.count("pseudo") == 2


def test_each_round_retrains_from_the_pretrained_weights_unless_told_to_warm_start(
    tiny_dir, fast_cfg, monkeypatch
):
    data = load(tiny_dir)
    starts = []
    real = stages.retrain_stage

    def spy(run, start, *args, **kwargs):
        starts.append(start)
        return real(run, start, *args, **kwargs)

    monkeypatch.setattr(fold, "retrain_stage", spy)
    pre, fine = [], []
    real_pre, real_fine = stages.pretrain_stage, stages.finetune_stage
    monkeypatch.setattr(fold, "pretrain_stage", lambda *a: pre.append(real_pre(*a)) or pre[-1])
    monkeypatch.setattr(fold, "finetune_stage", lambda *a: fine.append(real_fine(*a)) or fine[-1])
    cfg = with_overrides(
        fast_cfg, {"eval.folds": 2, "self_training.rounds": 2, "self_training.epochs": None}
    )
    assert cfg.self_training.init == "pretrained" and cfg.retrain_epochs() == cfg.finetune.epochs
    pipeline.run(data, cfg)
    assert len(starts) == 4 and all(s is pre[0] for s in starts)
    starts.clear()
    warm = with_overrides(cfg, {"self_training.init": "finetuned", "self_training.epochs": 1})
    pipeline.run(data, warm)
    assert starts[0] is fine[-2]["state"]  # fold 0, round 0: its finetuned weights
    assert starts[1] is not pre[-1] and starts[1] is not fine[-2]["state"]  # round 1: round 0's
