"""Batched trials: a voting or decision search scores many suggestions per Ray task on
fold models trained once, and still records every trial as results row and MLflow run."""

import contextlib

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import as_if_killed_before_its_end, tiny_search
from mlflow.tracking import MlflowClient

from mer_tune.errors import UsageError
from mer_tune.hpo.batched import DEFAULT_BATCH, batch_size
from mer_tune.hpo.cache import new_key
from mer_tune.hpo.spaces import load_space

WEIGHTS = {"audio": 0.7, "visual": 0.4, "text": 0.3, "fusion": 0.7}  # the paper's


def test_only_a_space_downstream_of_the_cache_is_batched():
    voting, thresholds = load_space("voting"), load_space("thresholds")
    assert batch_size(None, voting, True, "none") == (DEFAULT_BATCH, "")
    assert batch_size(7, load_space("decision"), True, "none") == (7, "")
    assert batch_size(1, voting, True, "none") == (1, "")
    # Asked for, and not possible: one trial per task, and the reason.
    size, note = batch_size(20, thresholds, True, "none")
    assert (
        size == 1 and "self_training.thresholds" in note and "upstream of the stage cache" in note
    )
    size, note = batch_size(20, voting, False, "none")
    assert size == 1 and "--no-cache" in note
    # Not asked for: one per task, silently where the space cannot be batched anyway...
    assert batch_size(None, thresholds, True, "none") == (1, "")
    # ...and with a note where only the scheduler keeps it from being batched.
    size, note = batch_size(None, voting, True, "asha")
    assert size == 1 and "--scheduler asha" in note and "drop --scheduler to batch" in note
    with pytest.raises(UsageError, match="--batch 20 with --scheduler asha"):
        batch_size(20, voting, True, "asha")


def _children(env, res):
    client = MlflowClient(f"sqlite:///{env / 'mlflow.db'}")
    query = f"tags.mlflow.parentRunId = '{res.parent_run_id}'"
    return client.search_runs([res.experiment_id], filter_string=query, max_results=100)


def test_a_batched_search_records_every_trial(search_env, tiny_dir):
    notes = []
    res = tiny_search(
        search_env, tiny_dir, space="voting", trials=8, batch=3, name="vb", concurrency=2,
        on_event=lambda kind, **kw: notes.append(kw["row"]["text"]) if kind == "note" else None,
    )  # fmt: skip
    assert notes[0] == (
        "--concurrency 2: a batched search scores its trials one after another in one Ray "
        "actor, so it does not apply (--batch 1 runs Tune trials)"
    )
    table = res.results
    assert list(table["trial"]) == list(range(8))
    assert (table["status"] == "FINISHED").all()
    assert list(table["trial_id"]) == [f"batch_{n:05d}" for n in range(8)]
    # Trial 0 is the paper's weights; the others are Optuna's, all different.
    first = table.iloc[0]
    assert {k: first[f"voting.weights.{k}"] for k in WEIGHTS} == pytest.approx(WEIGHTS)
    assert len(table.drop_duplicates([f"voting.weights.{k}" for k in WEIGHTS])) == 8
    # Every trained stage is shared by a voting search: trained once before the trials.
    state = yaml.safe_load((res.path / "search.yaml").read_text())
    assert state["shared_stages"]["stages"] == ["pretrain", "finetune", "pseudo"]
    runs = {r.data.tags["ray.trial_id"]: r for r in _children(search_env, res)}
    assert sorted(runs) == list(table["trial_id"])
    for row in table.to_dict("records"):
        run = runs[row["trial_id"]]
        assert run.info.status == "FINISHED"
        assert run.data.metrics["weighted_f1"] == pytest.approx(row["weighted_f1"])
        text = float(run.data.params["voting.weights.text"])
        assert text == pytest.approx(row["voting.weights.text"])
    # Trial 0 read every stage from the cache; the later ones reused its fold models.
    for trial in ("batch_00000", "batch_00004"):
        assert runs[trial].data.tags["mer_tune.cached_stages"] == "finetune,pretrain,pseudo"
    # Selection, confirm step and verdict as in any search.
    assert res.best_score == pytest.approx(table["weighted_f1"].max())
    assert res.verdict is not None and len(res.confirm) >= 2
    assert (res.path / "trial-outputs" / "batch_00007.npz").exists()


def test_the_seed_repeats_a_batched_search(search_env, tiny_dir):
    """Same seed and cache: the same suggestions and the same scores; batch sizes differ
    only in how the trials are grouped, not in what the sampler sees."""
    shared = dict(space="voting", trials=6, cache_dir=str(search_env / "cache"), holdout=0)
    key = new_key()
    a = tiny_search(search_env, tiny_dir, batch=5, name="a", cache_key=key, **shared)
    b = tiny_search(search_env, tiny_dir, batch=2, name="b", cache_key=key, **shared)
    cols = [c for c in a.results if c.startswith("voting.")] + ["weighted_f1"]
    pd.testing.assert_frame_equal(a.results[cols], b.results[cols])


def test_a_batched_decision_search_scores_the_offsets(search_env, tiny_dir):
    res = tiny_search(search_env, tiny_dir, space="decision", trials=5, batch=4, holdout=0)
    offsets = res.results[[c for c in res.results if c.startswith("decision.offsets.")]]
    assert (offsets.iloc[0] == 0).all()  # the plain vote first
    assert offsets.iloc[1:].abs().to_numpy().max() <= 2.0
    assert res.results["weighted_f1"].nunique() > 1


def test_a_batched_search_resumes_where_it_stopped(search_env, tiny_dir):
    from mer_tune.hpo.tuner import resume

    res = tiny_search(search_env, tiny_dir, space="voting", trials=6, batch=2, name="r")
    results = res.path / "results.csv"
    table = pd.read_csv(results)
    # As a driver killed after trial 2: later rows are gone, their runs are orphans.
    table.head(3).to_csv(results, index=False)
    as_if_killed_before_its_end(res.path)
    again = resume("r", storage=str(search_env / "runs"))
    assert list(again.results["trial"]) == list(range(6))
    assert list(again.results["weighted_f1"].head(3)) == list(table["weighted_f1"].head(3))
    ids = [r.data.tags["ray.trial_id"] for r in _children(search_env, again)]
    assert sorted(ids) == [f"batch_{n:05d}" for n in range(6)]  # one run each, no duplicate
    # The resumed sampler does not replay the suggestions made before the stop.
    weights = [c for c in again.results if c.startswith("voting.weights.")]
    assert len(again.results.drop_duplicates(weights)) == 6
    # Killed after its last batch was saved: a resume has nothing to run and finishes.
    as_if_killed_before_its_end(res.path)
    done = resume("r", storage=str(search_env / "runs"))
    assert len(done.results) == 6 and done.verdict is not None


def test_fold_models_that_cannot_train_stop_the_batches(search_env, tiny_dir):
    res = tiny_search(
        search_env, tiny_dir, space="voting", trials=9, batch=4, trial_timeout=0.01,
        max_failures=2,
    )  # fmt: skip
    assert list(res.results["status"]) == ["FAILED"]
    assert "--trial-timeout" in res.results.iloc[0]["error"]
    assert any("the other 8 trials were not run" in n for n in res.notes)
    assert "--max-failures 2: a batched search does not retry a trial" in "".join(res.notes)
    assert res.best_config is None


def test_progress_prints_one_line_per_batch(capsys):
    from mer_tune.printing import SearchProgress

    progress = SearchProgress(5)
    rows = [
        {"trial": n, "status": "FINISHED", "weighted_f1": f, "seconds": 0.01}
        for n, f in zip(range(1, 5), [0.5, 0.7, 0.6, np.float64(0.65)], strict=True)
    ]
    progress("batch", row={"rows": rows})
    line = capsys.readouterr().err.strip()
    assert "trials 1-4" in line and "done 4/5" in line and "best 0.7000" in line


def test_a_decision_search_on_one_class_is_refused_before_any_trial(search_env, tiny_dir):
    from conftest import write_dataset

    from mer_tune.errors import MerTuneError

    one = write_dataset(search_env / "one", classes=["neutral"])
    with pytest.raises(MerTuneError, match="no labelled sample of class 'angry'"):
        tiny_search(search_env, one, space="decision", name="one")
    with pytest.raises(UsageError, match="data.classes': List should have at least 2 items"):
        tiny_search(search_env, tiny_dir, space="decision", overrides={"data.classes": ["sad"]})
    assert not (search_env / "runs" / "one").exists()  # nothing was written


def test_a_batched_search_with_two_objectives_and_a_conditional_parameter(search_env, tiny_dir):
    (search_env / "cond.yaml").write_text(
        "params:\n"
        "  voting.mode: {type: categorical, choices: [probs, logits]}\n"
        "  voting.weights.text: {type: float, low: 0.0, high: 1.0, when: {voting.mode: logits}}\n"
    )
    res = tiny_search(
        search_env,
        tiny_dir,
        space=str(search_env / "cond.yaml"),
        trials=8,
        batch=4,
        objectives=["weighted_f1", "min_class_f1"],
        holdout=0,
    )
    table = res.results
    assert (table["status"] == "FINISHED").all() and len(table) == 8
    probs = table["voting.mode"] == "probs"
    assert table.loc[probs, "voting.weights.text"].isna().all()  # not used there
    assert table.loc[~probs, "voting.weights.text"].notna().all()
    assert (res.path / "pareto.csv").exists()


def test_a_staged_search_refuses_a_batch_it_cannot_take_before_any_step(tmp_path):
    from mer_tune.hpo.staged import staged_search

    with pytest.raises(UsageError, match="--batch 20 with --scheduler asha"):
        staged_search("full", 6, storage=str(tmp_path / "runs"), batch=20, scheduler="asha")
    assert not (tmp_path / "runs").exists()


def test_a_ctrl_c_while_a_batch_is_recorded_stops_after_the_batch(
    search_env, tiny_dir, monkeypatch
):
    """A Ctrl-C that arrives while a batch's MLflow runs are written stops the search
    once they are: every row of the batch has its run, and the store is not left locked
    (recording the stop, and the resume, write to it)."""
    import os
    import signal

    from mer_tune.errors import SearchInterrupted
    from mer_tune.hpo import runners
    from mer_tune.hpo.tuner import resume

    real = runners.record_batch

    def pressed_midway(recorder, sp, rows, batch):
        if batch[0]["trial"] > 0:
            os.kill(os.getpid(), signal.SIGINT)  # mid-write: the batch is still to write
        real(recorder, sp, rows, batch)

    # Python's own Ctrl-C handler, also where the suite runs as a background job
    # (which starts with Ctrl-C ignored).
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with monkeypatch.context() as patch:
            patch.setattr(runners, "record_batch", pressed_midway)
            with pytest.raises(SearchInterrupted, match="--resume c"):
                tiny_search(search_env, tiny_dir, space="voting", trials=6, batch=2, name="c")
    finally:
        signal.signal(signal.SIGINT, before)
    table = pd.read_csv(search_env / "runs" / "c" / "results.csv")
    assert list(table["trial"]) == [0, 1, 2]  # the baseline and the whole first batch
    res = resume("c", storage=str(search_env / "runs"))
    ids = sorted(r.data.tags["ray.trial_id"] for r in _children(search_env, res))
    assert ids == [f"batch_{n:05d}" for n in range(6)]


@pytest.mark.parametrize("ignored", [False, True])
def test_a_ctrl_c_inside_interrupts_after_comes_at_its_end_as_it_would_have(ignored):
    """The block runs to its end; then the Ctrl-C meets the handler it would have met:
    KeyboardInterrupt, or nothing where the process ignores Ctrl-C (a background job)."""
    import os
    import signal

    from mer_tune.hpo.runners import interrupts_after

    before = signal.signal(signal.SIGINT, signal.SIG_IGN if ignored else signal.default_int_handler)
    finished = []
    try:
        with contextlib.nullcontext() if ignored else pytest.raises(KeyboardInterrupt):
            with interrupts_after():
                os.kill(os.getpid(), signal.SIGINT)
                finished.append(True)
            finished.append("after")
    finally:
        signal.signal(signal.SIGINT, before)
    assert finished == ([True, "after"] if ignored else [True])
