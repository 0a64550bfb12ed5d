"""The two ways a search's trials run, behind one interface: `run(ctx, data_ref)` runs
the trials still to run and returns notes for the summary.

- TuneRunner: one Ray Tune trial per suggestion (the trial function is trial.py), new or
  restored from the search folder; the driver's TrialLogger (callback.py) writes each
  trial's row and MLflow child run.
- BatchedRunner: one Ray actor (batched.FoldModels) scores a batch of suggestions per
  call on fold models it keeps in memory; the driver writes each batch as it arrives.

A runner raises SearchInterrupted (after recording the truth) when the trials stopped
short; the session handles Ctrl-C and errors the same way for both.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from mer_tune.errors import SearchInterrupted
from mer_tune.hpo import card_features, ending, tune_state
from mer_tune.hpo.batched import FoldModels, record_batch
from mer_tune.hpo.callback import trial_logger
from mer_tune.hpo.context import SearchContext
from mer_tune.hpo.objectives import rung
from mer_tune.hpo.optuna_adapter import optuna_searcher
from mer_tune.hpo.trial import TrialSetup, run_trial
from mer_tune.hpo.whole_files import whole_file_filesystem


class Runner(Protocol):
    def run(self, ctx: SearchContext, data_ref: Any) -> list[str]: ...

    def stopped(self, ctx: SearchContext) -> str:
        """How far a search stopped by Ctrl-C got, for the resume hint."""
        ...


@dataclass
class TuneRunner:
    warm: list[tuple[dict, list[float]]] = field(default_factory=list)
    restore: bool = False  # continue Tune's saved run in the search folder

    def stopped(self, ctx: SearchContext) -> str:
        return "interrupted"

    def run(self, ctx: SearchContext, data_ref: Any) -> list[str]:
        from ray import tune

        if self.restore:
            tuner = tune.Tuner.restore(
                str(ctx.folder.ray_dir),
                trainable=_trainable(ctx, data_ref),
                resume_unfinished=True,
                resume_errored=False,
                restart_errored=False,
                storage_filesystem=whole_file_filesystem(),
            )
        else:
            tuner = _new_tuner(ctx, data_ref, self.warm)
        try:
            tuner.fit()
        finally:
            if ctx.record.share_features:
                _release_cards(ctx)
        _keep_what_tune_recorded(ctx)
        return []


def _new_tuner(ctx: SearchContext, data_ref: Any, warm: list):
    """The search's Tune run, from its record; trial 0 is the baseline."""
    from ray import tune

    rec, goals = ctx.record, ctx.goals
    searcher = optuna_searcher(
        ctx.space, ctx.space.defaults(ctx.base), rec.seed, ctx.path.name, warm, goals,
        rec.sampler,
    )  # fmt: skip
    return tune.Tuner(
        _trainable(ctx, data_ref),
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            # The first objective is what Tune ranks and ASHA compares at its rungs.
            metric=rung(goals)[0],
            mode=rung(goals)[1],
            num_samples=rec.trials,
            max_concurrent_trials=rec.concurrency,
            scheduler=_scheduler(rec.scheduler),
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name="ray",
            storage_path=str(ctx.path),
            storage_filesystem=whole_file_filesystem(),  # a kill never tears its files
            verbose=0,
            failure_config=tune.FailureConfig(max_failures=rec.max_failures),
            # Saved with the run as a reference to this search (callback.py).
            callbacks=[trial_logger(ctx)],
        ),
    )


def prepare_restore(ctx: SearchContext) -> None:
    """Before Tune's saved run is restored: its files made to agree (a driver killed
    while Tune saved them), and this process's logger registered for the restored run.
    Runs from a release that saved the logger itself get it replaced in their file."""
    rec = ctx.record
    searcher = optuna_searcher(
        ctx.space, ctx.space.defaults(ctx.base), rec.seed, ctx.path.name, [], ctx.goals,
        rec.sampler,
    )  # fmt: skip
    fixed = tune_state.agree(ctx.folder.ray_dir, searcher)
    if fixed:
        ctx.note(
            "Tune's saved state was from two moments (the driver was killed while saving "
            "it) and was brought in line: " + "; ".join(fixed)
        )
    tune_state.relink_callbacks(ctx.folder.ray_dir, [trial_logger(ctx)])


def _keep_what_tune_recorded(ctx: SearchContext) -> None:
    """Keep exactly the trials Ray recorded: a driver killed between a trial's end and
    the next experiment checkpoint leaves rows and runs that a resumed search redid.
    Tune ends fit() normally on the first Ctrl-C; what it leaves unfinished tells."""
    from ray.tune import ExperimentAnalysis

    trials = ExperimentAnalysis(str(ctx.folder.ray_dir)).trials
    done = [t for t in trials if t.status in ("TERMINATED", "ERROR")]
    if len(done) < len(trials) or len(trials) < ctx.record.trials:
        ending.interrupted(ctx)
        raise SearchInterrupted(
            ctx.resume_hint(f"interrupted with {len(done)} of {ctx.record.trials} trials done")
        )
    known = {t.trial_id for t in trials}
    for trial_id in set(ctx.rows) - known:
        del ctx.rows[trial_id]


def _scheduler(kind: str):
    from ray.tune.schedulers import ASHAScheduler

    from mer_tune.hpo.fold_pruner import FoldPruner

    if kind == "asha":
        return ASHAScheduler(grace_period=2, reduction_factor=2)
    return FoldPruner() if kind == "folds" else None


def _trainable(ctx: SearchContext, data_ref: Any):
    """The trial function with its fixed arguments; `data_ref` is the object-store
    reference of the trials' data (a list around it, so that Tune stores the reference)."""
    from ray import tune

    rec = ctx.record
    trainable = tune.with_parameters(
        run_trial,
        data_ref=[data_ref],
        base=ctx.base.to_dict(),
        setup=TrialSetup(
            threads=max(1, int(rec.cpus_per_trial)),
            use_gpu=rec.gpus_per_trial > 0,
            cache_dir=rec.cache_dir,
            timeout=rec.trial_timeout,
            outputs=str(ctx.folder.outputs),
            cache_key=ctx.folder.cache_key(),
            share_features=ctx.holders if rec.share_features else None,
        ),
    )
    return tune.with_resources(trainable, {"cpu": rec.cpus_per_trial, "gpu": rec.gpus_per_trial})


def _release_cards(ctx: SearchContext) -> None:
    """End the search's card holders; a failure here only warns (the search's own
    outcome, or its interruption, is what the user needs to see)."""
    import sys

    try:
        card_features.release(ctx.holders)
    except Exception as err:  # noqa: BLE001
        print(f"note: could not end the cards' feature holders ({err})", file=sys.stderr)


@dataclass
class BatchedRunner:
    """The batched search: trials len(rows) .. trials - 1, the baseline alone first (it
    trains), then `batch` at a time. Each batch's rows and child runs are written as it
    arrives, while the actor scores the next."""

    first_point: dict | None  # the baseline's values; None on a resume past it
    told: list[tuple[dict, list[float]]] = field(default_factory=list)

    def stopped(self, ctx: SearchContext) -> str:
        return f"interrupted with {len(ctx.rows)} of {ctx.record.trials} trials done"

    def run(self, ctx: SearchContext, data_ref: Any) -> list[str]:
        """Returns a note when the fold models could not be trained (the remaining
        trials are not run)."""
        import ray

        total, number = ctx.record.trials, len(ctx.rows)
        if number >= total:  # a search killed after its last batch was saved
            return []
        actor = _fold_models(ctx, data_ref, self.first_point, self.told)
        note = ""
        try:
            # The baseline trains the fold models alone, so its batch is one trial.
            pending = actor.run.remote(number, 1 if number == 0 else self._next(ctx, number))
            while pending is not None:
                batch, trained = ray.get(pending)
                number = max(r["trial"] for r in batch) + 1
                pending = None
                if number < total and trained:
                    pending = actor.run.remote(number, self._next(ctx, number))
                elif not trained and number < total:
                    note = (
                        f"trial {batch[-1]['trial']} could not train the fold models every "
                        f"batched trial votes on; the other {total - number} trials were not run"
                    )
                with interrupts_after():  # a batch is recorded whole, or not at all
                    record_batch(ctx.recorder, ctx.space, ctx.rows, batch)
                    ctx.save_rows()
                ctx.on_event("batch", row={"rows": [ctx.rows[r["trial_id"]] for r in batch]})
        finally:
            ray.kill(actor)
        return [note] if note else []

    @staticmethod
    def _next(ctx: SearchContext, number: int) -> int:
        return min(ctx.record.batch, ctx.record.trials - number)


@contextlib.contextmanager
def interrupts_after() -> Iterator[None]:
    """A Ctrl-C during the block takes effect when the block ends. An MLflow write cut
    short leaves its SQLite store locked (the write's transaction is never rolled back),
    and then recording the stop itself fails; a batch's rows and runs stay whole."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signals reach the main thread only
        return
    caught: list = []
    previous = signal.signal(signal.SIGINT, lambda *frame: caught.append(frame))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:  # as it would have come, to the handler it would have met (or none)
        signal.raise_signal(signal.SIGINT)


def _fold_models(ctx: SearchContext, data_ref: Any, first_point: dict | None, told: list):
    """The actor that keeps the fold models and runs the study's ask / score / tell."""
    import ray

    rec = ctx.record
    setup = {
        "threads": rec.cpus_per_trial,
        "use_gpu": rec.gpus_per_trial > 0,
        "cache_dir": rec.cache_dir,
        "cache_key": ctx.folder.cache_key(),
        "timeout": rec.trial_timeout,
        "outputs": str(ctx.folder.outputs),
    }
    study = {
        "space": ctx.space,
        "goals": ctx.goals,
        "seed": int(rec.seed),
        "sampler": rec.sampler,
        "told": told,
        "first_point": first_point,
        "done": len(ctx.rows),
    }
    actor_class = ray.remote(FoldModels).options(
        num_cpus=rec.cpus_per_trial, num_gpus=rec.gpus_per_trial
    )
    # The reference, not the data: Ray hands the actor the object store's one copy.
    return actor_class.remote(data_ref, ctx.base.to_dict(), setup, study)
