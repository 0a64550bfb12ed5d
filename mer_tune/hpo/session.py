"""One search, one object. A SearchSession is started from SearchSettings (a new search)
or resumed from its folder (an interrupted one); `run` waits for the stages every trial
shares, lets its runner (runners.py) run the trials, and ends it (ending.py). Ctrl-C or
an error at any point records the truth (unfinished trials and the parent run KILLED)
and, for Ctrl-C, says how to resume.

    CLI options -> SearchSettings -> SearchSession.start -> runner -> trial -> pipeline
    stages -> ending (results, study, plots, confirm step, verdict)
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import Callable
from typing import Any

from mer_tune.errors import MerTuneError, SearchInterrupted, UsageError
from mer_tune.hpo import ending, starting
from mer_tune.hpo.batched import told_from
from mer_tune.hpo.context import SearchContext, no_events
from mer_tune.hpo.folder import SearchFolder, damaged, storage_root
from mer_tune.hpo.holdout import search_data
from mer_tune.hpo.ray_setup import init_ray
from mer_tune.hpo.result import SearchResult
from mer_tune.hpo.runners import BatchedRunner, Runner, TuneRunner, prepare_restore
from mer_tune.hpo.settings import SearchSettings
from mer_tune.hpo.shared_stages import SharedStagesTask
from mer_tune.hpo.tracking import SearchRecorder, check_reachable
from mer_tune.hpo.tune_state import first_save_missing
from mer_tune.hpo.warm_start import import_trials

# What --resume cannot do without (search.yaml written by hand may lack them).
RESUME_NEEDS = ("trials", "tracking_uri", "experiment", "parent_run_id")


class SearchSession:
    def __init__(
        self,
        ctx: SearchContext,
        runner: Runner,
        data_ref: Any,
        task: SharedStagesTask | None = None,
        notes: list[str] | None = None,
    ) -> None:
        self.ctx, self.runner, self.data_ref, self.task = ctx, runner, data_ref, task
        self.notes = notes or []  # for the summary, before the ending's own

    @classmethod
    def start(
        cls, settings: SearchSettings, on_event: Callable[..., None] | None = None
    ) -> SearchSession:
        """A new search: every check, then its folder, record and parent run."""
        tune_environment()
        plan = starting.plan(settings)
        settled = starting.resources(plan)
        record = starting.first_record(plan, settled)
        ctx, data_ref, task = starting.create(plan, record, on_event)
        notes = [plan.imported.line()] if plan.imported else []
        notes += plan.notes
        if settings.share_features and not record.gpus_per_trial:
            notes.append("--share-features: the trials run on the CPU, where it has no effect")
        for note in notes:
            ctx.note(note)
        warm = plan.imported.points if plan.imported else []
        if plan.batch > 1:
            runner: Runner = BatchedRunner(plan.space.defaults(plan.base), warm)
        else:
            runner = TuneRunner(warm)
        return cls(ctx, runner, data_ref, task, notes)

    @classmethod
    def resume(
        cls,
        name: str,
        storage: str | os.PathLike = "mer-tune-runs",
        address: str | None = None,
        on_event: Callable[..., None] | None = None,
    ) -> SearchSession:
        """An interrupted search (Ctrl-C, a killed driver, a reboot) where it stopped:
        finished trials are kept, unfinished ones rerun, Optuna's study continues, and the
        MLflow parent and child runs are reused, never duplicated. The data must still
        give the same fingerprint and the same holdout."""
        tune_environment()
        folder = SearchFolder.named(storage_root(storage), name, "--resume")
        record = _resumable(folder, name)
        batched = record.batch > 1
        unsaved = None if batched else first_save_missing(folder.ray_dir)
        rows = _recorded_rows(folder, name, unsaved)
        base = folder.base()
        sp = folder.space(base)
        uri = record.uri(folder.state_file)
        check_reachable(uri)
        data = search_data(folder, record, base)
        init_ray(address)
        recorder = SearchRecorder(uri, record.experiment)
        recorder.resume_parent(record.parent_run_id)
        ctx = SearchContext(folder, record, recorder, sp, base, rows, on_event or no_events)
        warm = []
        if record.from_searches:
            warm = import_trials(
                folder.path.parent, list(record.from_searches), data.dataset.fingerprint,
                sorted(data.holdout.names), base, sp, ctx.goals,
            ).points  # fmt: skip
        if unsaved:
            # Killed during Tune's first save, as the first trial started: nothing ended,
            # and the trials start afresh (the unfinished ones' rows and runs are dropped).
            shutil.rmtree(folder.ray_dir)
            rows.clear()
            ctx.note(
                f"Tune's first save was not whole (no {unsaved}); the search's trials start afresh"
            )
        if not batched and not folder.ray_dir.is_dir() and rows:
            raise MerTuneError(
                f"--resume {name}: {folder.ray_dir} is missing while {len(rows)} trials are "
                "recorded in results.csv; Tune's run cannot be continued without it"
            )
        session = cls(ctx, _resumed_runner(ctx, batched, warm), None)
        with session.stopped_as_interrupted():
            session.data_ref, session.task = starting.start_trials_data(
                data, base, record, sp, folder
            )
        return session

    def run(self) -> SearchResult:
        """The trials still to run, then the search's ending."""
        ctx = self.ctx
        with self.stopped_as_interrupted():
            self._wait_for_shared_stages()
        try:
            notes = self.runner.run(ctx, self.data_ref)
        except KeyboardInterrupt:  # a second Ctrl-C: Tune stops at once
            self.interrupted()
            raise SearchInterrupted(ctx.resume_hint(self.runner.stopped(ctx))) from None
        except SearchInterrupted:
            raise  # the runner recorded it
        except BaseException as err:
            full = disk_full(err)
            if full is not None:
                raise self._stopped_by_full_disk(full) from None
            self.interrupted()
            raise
        return self.finish(notes)

    def _stopped_by_full_disk(self, err: BaseException) -> MerTuneError:
        """What is left of the truth recorded (a full disk may refuse that too), and one
        line naming where and how much is free, and how to resume."""
        with contextlib.suppress(Exception):
            self.interrupted()
        with contextlib.suppress(Exception):  # its results.csv may not have been written
            self.ctx.recorder.finish_parent("KILLED")
        where = getattr(err, "filename", None) or self.ctx.path
        free = shutil.disk_usage(self.ctx.path).free
        return MerTuneError(
            f"search {self.ctx.path.name} stopped: {where}: the disk is full "
            f"({free / 2**20:.0f} MiB free); free some space, then continue it with: "
            f"{self.ctx.resume_command}"
        )

    def interrupted(self) -> None:
        ending.interrupted(self.ctx)

    def finish(self, notes: list[str]) -> SearchResult:
        result = ending.conclude(self.ctx)
        result.notes = self.notes + result.notes + notes
        return result

    def stopped_as_interrupted(self):
        """Ctrl-C in the block stops the search as it would during its trials."""
        return _StoppedAsInterrupted(self)

    def _wait_for_shared_stages(self) -> None:
        """Wait for the shared stages' task (its curves go to the parent run), recorded
        in search.yaml."""
        if self.task is None:
            return
        try:
            done = self.task.wait(self.ctx.on_event, self.ctx.recorder.log_parent_history)
        except BaseException:  # it must not write into the cache after the search gave up
            self.task.cancel()
            raise
        if done:
            self.ctx.update(shared_stages=done)


class _StoppedAsInterrupted:
    def __init__(self, session: SearchSession) -> None:
        self.session = session

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, value, traceback) -> bool:
        if kind is not None and issubclass(kind, KeyboardInterrupt):
            self.session.interrupted()
            raise SearchInterrupted(self.session.ctx.resume_hint("interrupted")) from None
        return False


def _resumable(folder: SearchFolder, name: str):
    """The search's record, when it can be resumed; else one line saying why not."""
    if not folder.state_file.exists():
        raise MerTuneError(f"--resume {name}: no search of that name in {folder.path.parent}")
    record = folder.record()
    missing = [k for k in RESUME_NEEDS if getattr(record, k) is None]
    if missing:
        raise damaged(folder.state_file, f"no {missing[0]}")
    if record.finished:
        raise UsageError(
            f"--resume {name}: the search finished at {record.finished}; see `mer-tune "
            f"report {name}` (`mer-tune confirm {name}` reruns its confirm step)"
        )
    return record


def _recorded_rows(folder: SearchFolder, name: str, unsaved: str | None) -> dict[str, dict]:
    """results.csv's rows by trial id, checked against Tune's saved state."""
    recorded = folder.results()
    if recorded is not None and len(recorded) and "trial_id" not in recorded.columns:
        raise damaged(folder.results_file, "no column 'trial_id'")  # what rows are keyed by
    ended = 0 if recorded is None else len(recorded)
    if ended and "status" in recorded.columns:
        ended = int((recorded["status"] != "RUNNING").sum())
    if unsaved and ended:
        raise MerTuneError(
            f"--resume {name}: {folder.ray_dir} lacks Tune's saved {unsaved} while {ended} "
            "trials are recorded in results.csv; Tune's run cannot be continued without it"
        )
    rows: dict[str, dict] = {}
    for row in recorded.to_dict("records") if recorded is not None else []:
        rows[row["trial_id"]] = row
    return rows


def _resumed_runner(ctx: SearchContext, batched: bool, warm: list) -> Runner:
    if batched:
        # The actor's study is rebuilt from the finished trials (and any warm start).
        first = None if ctx.rows else ctx.space.defaults(ctx.base)
        return BatchedRunner(first, warm + told_from(ctx.rows, ctx.space, ctx.goals))
    if not ctx.folder.ray_dir.is_dir():  # stopped before its first trial started
        return TuneRunner(warm)
    prepare_restore(ctx)
    return TuneRunner(warm, restore=True)


def disk_full(err: BaseException | None) -> BaseException | None:
    """The full-disk error `err` is or came from (an OSError, or the sqlite MLflow
    store's own words for it; Tune may wrap either), or None."""
    seen = 0
    while err is not None and seen < 10:
        if isinstance(err, OSError) and err.errno == errno.ENOSPC:
            return err
        if "database or disk is full" in str(err):
            return err
        err, seen = err.__cause__ or err.__context__, seen + 1
    return None


def tune_environment() -> None:
    """Settings Ray Tune reads when a Tuner starts."""
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # our progress lines replace Tune's tables
    # Save Tune's experiment state at every step (it is small), so a killed driver loses
    # as little as possible.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "0")
