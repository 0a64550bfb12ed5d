"""What a search is asked (SearchSettings), what it records (SearchRecord, search.yaml),
and how its logger survives Tune's save and restore: without a cluster."""

import dataclasses
import math
import pickle

import pytest
import yaml

from mer_tune.errors import UsageError
from mer_tune.hpo.record import SearchRecord
from mer_tune.hpo.settings import SearchSettings
from mer_tune.hpo.stats import decide


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"trials": 0}, "--trials 0: must be at least 1"),
        ({"scheduler": "hyperband"}, "--scheduler hyperband: expected none, asha or folds"),
        ({"confirm_top": -1}, "--confirm-top and --confirm-seeds must be 0 or more"),
        ({"holdout": 0.7}, "--holdout 0.7: must be between 0 and 0.5"),
        ({"trial_timeout": math.inf}, "--trial-timeout inf: must be a finite number"),
        ({"trial_timeout": math.nan}, "--trial-timeout nan: must be a finite number"),
        ({"cpus_per_trial": math.nan}, "--cpus-per-trial nan: must be a finite number"),
        ({"gpus_per_trial": math.inf}, "--gpus-per-trial inf: must be a finite number"),
        ({"trial_timeout": 0}, "--trial-timeout 0: must be above 0"),
        ({"objectives": "weighted_f1,f1"}, "--objective f1: unknown objective"),
        ({"pick": "max weighted_f1"}, "--pick chooses a point of a Pareto front"),
        (
            {"scheduler": "folds", "objectives": "min_class_f1,weighted_f1"},
            "--scheduler folds compares weighted F1: put weighted_f1 first",
        ),
    ],
)
def test_bad_settings_are_refused_when_built_naming_the_option(changes, message):
    with pytest.raises(UsageError, match="^" + message.replace("(", r"\(")):
        SearchSettings(**changes)


def test_settings_are_frozen_and_normalised_once():
    s = SearchSettings(objectives="weighted_f1, min_class_f1", from_searches=["a"])
    assert s.objectives == ("weighted_f1", "min_class_f1")
    assert s.from_searches == ("a",)
    assert SearchSettings().objectives == ("weighted_f1",)  # the default, in one place
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.trials = 3
    assert s.replace(trials=3).trials == 3 and s.trials == 8
    assert s.the_holdout_seed == 0 and s.replace(holdout_seed=7).the_holdout_seed == 7


def test_a_record_of_an_older_search_reads_the_defaults_and_keeps_unknown_keys():
    old = {"space": "thresholds", "trials": 4, "seed": 3, "objectives": None, "later_key": 1}
    record = SearchRecord.from_dict(old)
    assert record.objectives == ("weighted_f1",)
    assert record.the_holdout_seed == 3  # no holdout_seed: the seed
    assert record.retrain_gpus == 0 and record.batch == 1 and record.confirm_top == 3
    written = record.replace(finished=None).to_dict()
    assert written["later_key"] == 1  # a later release's key survives a rewrite
    assert "finished" not in written and "shared_stages" not in written
    assert written["objectives"] == ["weighted_f1"]
    yaml.safe_dump(written)  # plain YAML types only (no tuples)
    again = SearchRecord.from_dict(yaml.safe_load(yaml.safe_dump(written)))
    assert again == record


def test_a_trade_off_verdict_adopts_nothing_without_editing_its_text():
    gains = {3: (0.05, 0.01, 0.09)}
    v = decide(gains, {3: 0.8}, baseline=0)
    assert v.outcome == "gain" and v.adopted == 3 and v.consequence == ""
    lost = decide({3: (-0.05, -0.09, -0.01)}, {3: 0.7}, baseline=0)
    assert lost.text == lost.finding + "; best_config.yaml keeps the paper's values"
    trade = dataclasses.replace(lost, consequence="--pick chooses", adopted=None)
    assert trade.text == lost.finding + "; --pick chooses"
    assert trade.to_dict()["text"] == trade.text and "finding" not in trade.to_dict()


def test_a_saved_logger_loads_as_the_live_logger_of_its_search(tmp_path):
    from ray.tune import Callback

    from mer_tune.hpo.callback import trial_logger
    from mer_tune.hpo.context import SearchContext
    from mer_tune.hpo.folder import SearchFolder
    from mer_tune.hpo.spaces import load_space
    from mer_tune.method.config import build_config

    base = build_config()
    ctx = SearchContext(
        SearchFolder(tmp_path),
        SearchRecord(parent_run_id="run-1"),
        recorder=None,
        space=load_space("thresholds", base),
        base=base,
        rows={},
    )
    saved = pickle.dumps(trial_logger(ctx))
    assert len(saved) < 200  # a reference, not the rows, client and config
    live = trial_logger(dataclasses.replace(ctx, rows={"t": {"trial": 0}}))
    restored = pickle.loads(saved)
    assert restored is live and restored.ctx.rows == {"t": {"trial": 0}}
    orphan = pickle.dumps(trial_logger(dataclasses.replace(ctx, record=SearchRecord())))
    from mer_tune.hpo import callback

    callback._LIVE.clear()
    assert type(pickle.loads(orphan)) is Callback  # no search of its own here: inert


def test_a_run_saved_with_an_old_logger_gets_the_live_one_written_in(tmp_path, monkeypatch):
    """A search from an earlier release saved its logger itself, referring to names that
    have since moved: its tuner.pkl still loads, and the live logger replaces it."""
    import ray.cloudpickle as cloudpickle
    from ray.tune import Callback, RunConfig

    from mer_tune.hpo import callback, tune_state

    def gone():
        """A module-level name of an earlier release."""

    gone.__module__, gone.__qualname__ = "mer_tune.hpo.callback", "gone_since"
    monkeypatch.setattr(callback, "gone_since", gone, raising=False)
    old = {"_run_config": RunConfig(callbacks=[Callback()]), "refers_to": gone}
    (tmp_path / "tuner.pkl").write_bytes(cloudpickle.dumps(old))
    monkeypatch.delattr(callback, "gone_since")
    live = Callback()
    assert tune_state.relink_callbacks(tmp_path, [live])
    state = pickle.loads((tmp_path / "tuner.pkl").read_bytes())
    assert len(state["_run_config"].callbacks) == 1
    assert "refers_to" in state  # the rest of Tune's state is kept
