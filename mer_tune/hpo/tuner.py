"""`mer-tune search`: Ray Tune runs the trials, Optuna suggests them, MLflow records them.

The driver owns every MLflow write (see tracking.py) through a Tune callback; trials only
run the pipeline and report to Tune. The dataset reaches trials once, through the object
store (`tune.with_parameters`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from mer_tune.data.layout import DataOptions, MERData
from mer_tune.data.resolve import describe, reopen, resolve
from mer_tune.errors import MerTuneError, SearchInterrupted, UsageError
from mer_tune.hpo import card_features, front, tune_state
from mer_tune.hpo.batched import batch_size, run_batches, told_from
from mer_tune.hpo.cache import new_key
from mer_tune.hpo.callback import logger_callback, write_results
from mer_tune.hpo.folder import SearchFolder, damaged, storage_root
from mer_tune.hpo.gpu import (
    check_packing,
    largest_config,
    own_copy_fraction,
    packing,
    trial_bytes,
)
from mer_tune.hpo.holdout import Holdout, check_fraction, check_same, withhold, write_csv
from mer_tune.hpo.holdout import choose as choose_holdout
from mer_tune.hpo.objectives import METRIC, check_scheduler, directions, parse_pick, rung
from mer_tune.hpo.objectives import parse as parse_objectives
from mer_tune.hpo.optuna_adapter import optuna_searcher
from mer_tune.hpo.ray_setup import card_bytes, init_ray
from mer_tune.hpo.shared_stages import SharedStagesTask, start_shared_stages
from mer_tune.hpo.spaces import Space, load_space, trial_config, unused
from mer_tune.hpo.tracking import (
    SearchRecorder,
    check_reachable,
    redact,
    resolve_uri,
    ui_command,
)
from mer_tune.hpo.trial import run_trial
from mer_tune.hpo.warm_start import import_trials
from mer_tune.hpo.whole_files import whole_file_filesystem
from mer_tune.method.config import Config, build_config, load_config, with_overrides
from mer_tune.outputs import (
    check_folder_target,
    ensure_writable,
    make_private_dir,
    plain_name,
    write_secret,
    write_text,
)


@dataclass
class SearchResult:
    results: pd.DataFrame  # one row per trial
    best_config: Config | None
    best_score: float | None
    path: Path  # the search's folder under --storage
    experiment_id: str
    parent_run_id: str
    tracking_uri: str
    # The confirm step (None when the search has no outer holdout): one row per
    # confirmed trial (inner and holdout scores, optimism gap, gain over the baseline).
    confirm: pd.DataFrame | None = None
    verdict: Any = None  # stats.Verdict
    holdout_size: int = 0
    notes: list[str] = field(default_factory=list)
    pick_error: str | None = None  # --pick met by no point of the front (the front is kept)

    @property
    def ui_command(self) -> str:
        return ui_command(self.tracking_uri, self.experiment_id)


def search(
    space: str | Space = "thresholds",
    trials: int = 8,
    data: str | None = None,
    *,
    config: str | Path | Config | None = None,
    overrides: dict[str, Any] | None = None,
    folds: int | None = 1,
    repeats: int | None = None,
    concurrency: int | None = None,
    cpus_per_trial: float = 1,
    gpus_per_trial: float | None = None,
    scheduler: str = "none",
    seed: int = 0,
    address: str | None = None,
    storage: str | Path = "mer-tune-runs",
    tracking_uri: str | None = None,
    experiment: str = "mer-tune",
    name: str | None = None,
    cache: bool = True,
    cache_dir: str | Path | None = None,
    max_failures: int = 0,
    trial_timeout: float | None = None,
    data_options: DataOptions | None = None,
    holdout: float = 0.2,
    holdout_seed: int | None = None,
    confirm_top: int = 3,
    confirm_seeds: int = 0,
    baseline_search: str | None = None,
    cache_key: bytes | None = None,
    from_searches: list[str] | tuple[str, ...] = (),
    objectives: list[str] | tuple[str, ...] | str | None = None,
    pick: str | None = None,
    batch: int | None = None,
    share_features: bool = False,
    on_event: Callable[..., None] | None = None,
) -> SearchResult:
    """Run a hyperparameter search and return its results table and best config.

    Before any trial, a stratified `holdout` share of the labelled set is set aside
    (seed `holdout_seed`, default `seed`); trials select on the rest. At the end the
    `confirm_top` best trials and the baseline (trial 0) are scored on the holdout
    (`res.confirm`) and `res.verdict` says whether the winner beats the baseline.
    `from_searches` names earlier searches (in `storage`) whose finished trials seed
    Optuna's study, where their settings and data agree with this one's (warm_start.py).
    Several `objectives` (objectives.py) make it a multi-objective search: the result is
    a Pareto front (STORAGE/NAME/pareto/), and `pick` chooses best_config.yaml from it.
    When every searched parameter lies downstream of the stage cache (voting weights,
    decision offsets), trials run `batch` at a time in one Ray actor (batched.py;
    None: 100 where the space allows it, 1: one Ray Tune trial each).
    `share_features`: GPU trials on one card read one copy of the features
    (card_features.py) rather than each uploading its own.

    Example (in a notebook)::

        import mer_tune
        res = mer_tune.search(space="thresholds", trials=16, data="synthetic:small")
        res.results.sort_values("weighted_f1", ascending=False).head()
        res.confirm, res.verdict.text, res.best_config.to_yaml()
    """

    _tune_environment()
    if trials < 1:
        raise UsageError(f"--trials {trials}: must be at least 1")
    if scheduler not in ("none", "asha", "folds"):
        raise UsageError(f"--scheduler {scheduler}: expected none, asha or folds")
    if confirm_top < 0 or confirm_seeds < 0:
        raise UsageError("--confirm-top and --confirm-seeds must be 0 or more")
    check_fraction(holdout)  # before anything is created or loaded
    goals = parse_objectives(objectives)
    check_scheduler(goals, scheduler)
    if pick and parse_pick(pick, goals) and len(goals) == 1:
        raise UsageError("--pick chooses a point of a Pareto front: give several --objective")
    on_event = on_event or (lambda *a, **k: None)
    base = (
        config
        if isinstance(config, Config)
        else (build_config() if config is None else load_config(config))
    )
    fixed = {"eval.folds": folds} if folds else {}
    fixed |= {"eval.repeats": repeats} if repeats else {}
    base = with_overrides(base, {**(overrides or {}), **fixed, "seed": seed})
    if scheduler == "folds":
        from mer_tune.hpo.fold_pruner import check_folds

        check_folds(base.eval.folds, base.eval.repeats)
        if goals[0] != METRIC:
            raise UsageError("--scheduler folds compares weighted F1: put weighted_f1 first")
    sp = load_space(space, base)
    base = sp.base_config(base)
    batch, batch_note = batch_size(batch, sp, cache, scheduler)
    batch_notes = [batch_note] if batch_note else []
    if batch > 1 and concurrency is not None:
        batch_notes.append(
            f"--concurrency {concurrency}: a batched search scores its trials one after "
            "another in one Ray actor, so it does not apply (--batch 1 runs Tune trials)"
        )
    if batch > 1 and max_failures:
        batch_notes.append(
            f"--max-failures {max_failures}: a batched search does not retry a trial (a "
            "failed one is recorded and the search goes on); --batch 1 runs Tune trials, "
            "which retry"
        )
    uri = resolve_uri(tracking_uri)
    check_reachable(uri)
    root = ensure_writable(storage_root(storage))
    given = name is not None
    name = plain_name(name, "--name") if given else f"{sp.name}-{datetime.now():%Y%m%d-%H%M%S}"
    path = root / name
    if given and path.exists():
        raise UsageError(
            f"--name {name}: a search of that name exists in {root}; pick another name"
        )
    cache_location = _cache_location(cache_dir, path) if cache else None
    opts = data_options or DataOptions(classes=tuple(base.data.classes))
    dataset = resolve(data, opts)
    if "pseudo_precision" in goals and dataset.hidden_labels is None:
        raise UsageError(
            "--objective pseudo_precision: needs the pool's true labels, which only "
            "synthetic data (or a label file for the pool) gives"
        )
    holdout_seed = seed if holdout_seed is None else holdout_seed
    ho = choose_holdout(dataset, holdout, holdout_seed, base.eval.folds, base.eval.select_on)
    trial_data = withhold(dataset, ho)
    imported = None
    if from_searches:
        imported = import_trials(
            root, list(from_searches), dataset.fingerprint, sorted(ho.names), base, sp, goals
        )

    init_ray(address)
    import ray

    total_gpus = ray.cluster_resources().get("GPU", 0)
    total_cpus = ray.cluster_resources().get("CPU", 1)
    gpus = (1 if total_gpus >= 1 else 0) if gpus_per_trial is None else gpus_per_trial
    if gpus > total_gpus:
        raise UsageError(f"--gpus-per-trial {gpus:g}: the cluster has {total_gpus:g} GPUs")
    if cpus_per_trial > total_cpus:
        raise UsageError(
            f"--cpus-per-trial {cpus_per_trial:g}: the cluster has {total_cpus:g} CPUs"
        )
    concurrency = concurrency or max(1, int(total_cpus // max(cpus_per_trial, 1)))
    gpu_estimate, own_copy_gpus = None, gpus
    if gpus > 0:
        # The space's largest trial: a search that draws model.hidden or optim.batch_size
        # is packed for the largest it can draw.
        largest = largest_config(base, sp.params)
        whole = trial_bytes(dataset.dims, len(dataset.classes), dataset.nbytes(), largest)
        gpu_estimate, shared = packing(whole, dataset.nbytes(), share_features)
        card = card_bytes(gpus)
        if card:
            check_packing(gpu_estimate, gpus, card, shared)
        # What uploads its own copy even so (the confirm step's retraining) needs room for it.
        own_copy_gpus = own_copy_fraction(whole, gpus, card) if share_features else gpus

    # Every check has passed: only now does anything get written.
    path = _reserve(root, name, given)
    name = path.name
    write_text(
        SearchFolder(path).space_file, yaml.safe_dump(sp.to_dict(), sort_keys=False)
    )  # for resume
    # Signs the stage cache's entries; a staged search's steps share one key and cache.
    write_secret(SearchFolder(path).key_file, (cache_key or new_key()).hex())
    if len(ho):
        write_csv(SearchFolder(path).holdout_file, dataset, ho)
    settings = {
        "space": sp.name,
        "trials": trials,
        "seed": seed,
        "folds": base.eval.folds,
        "repeats": base.eval.repeats,
        "select_on": base.eval.select_on,
        "holdout": holdout,
        "holdout_seed": holdout_seed,
        "holdout_size": len(ho),
        "confirm_top": confirm_top,
        "confirm_seeds": confirm_seeds,
        "scheduler": scheduler,
        "concurrency": concurrency,
        "cpus_per_trial": cpus_per_trial,
        "gpus_per_trial": gpus,
        "gpu_memory_estimate_gib": round(gpu_estimate / 2**30, 2) if gpu_estimate else None,
        "data": dataset.source,
        "cache": cache,
        "max_failures": max_failures,
        "trial_timeout": trial_timeout,
        "batch": batch,
        "share_features": share_features,
        "own_copy_gpus": own_copy_gpus,
    }
    # The shared stages train while the MLflow store opens and the parent run starts.
    task, recorder = None, None
    try:
        data_ref, task = _start_before_trials(
            trial_data, base, settings | {"cache_dir": cache_location}, path, sp
        )
        recorder = SearchRecorder(uri, experiment)
        tags = {"mer_tune.data_fingerprint": dataset.fingerprint, "mer_tune.storage": str(path)}
        parent = recorder.start_parent(name, settings, tags | {"mer_tune.kind": "search"})
        if len(ho):
            recorder.log_artifact(parent, SearchFolder(path).holdout_file)
        state = settings | {
            "parent_run_id": parent,
            "tracking_uri": redact(uri),  # a password is never written down
            "experiment": experiment,
            "cache_dir": cache_location,
            "dataset": describe(data, opts, dataset),
            "baseline_search": baseline_search,
            "from_searches": list(from_searches),
            "warm_start_trials": len(imported.points) if imported else 0,
            "objectives": goals,
            "pick": pick,
        }
        SearchFolder(path).write_state(state)
        write_text(SearchFolder(path).base_file, base.to_yaml())

        warm = imported.points if imported else []
        rows: dict[str, dict] = {}
        notes = [imported.line()] if imported else []
        notes += batch_notes
        if share_features and not gpus:
            notes.append("--share-features: the trials run on the CPU, where it has no effect")
        for note in notes:
            on_event("note", row={"text": note})
        _before_trials(task, state, path, sp, base, recorder, rows, on_event)
    except BaseException:  # an error or Ctrl-C before the trials: the task stops too
        if task is not None:
            task.cancel()
        if recorder is None or recorder.parent_id is None:
            # Recorded nowhere yet (no MLflow run): no half-made search is left behind.
            shutil.rmtree(path, ignore_errors=True)
        raise
    if batch > 1:
        result = _fit_batched(
            data_ref, base, state, path, sp, sp.defaults(base), warm, recorder, rows, on_event
        )
    else:
        tuner = _new_tuner(data_ref, base, state, path, sp, warm, recorder, rows, on_event)
        result = _fit(tuner, recorder, path, rows, sp, base, state)
    result.notes = notes + result.notes
    return result


def _new_tuner(
    data_ref: Any,
    base: Config,
    state: dict,
    path: Path,
    sp: Space,
    warm: list,
    recorder: SearchRecorder,
    rows: dict,
    on_event: Callable[..., None],
):
    """The search's Tune run, from its settings in `state`; trial 0 is the baseline."""
    from ray import tune

    goals = state.get("objectives") or [METRIC]
    searcher = optuna_searcher(sp, sp.defaults(base), state["seed"], path.name, warm, goals)
    return tune.Tuner(
        _trainable(data_ref, base, state, path),
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            # The first objective is what Tune ranks and ASHA compares at its rungs.
            metric=rung(goals)[0],
            mode=rung(goals)[1],
            num_samples=state["trials"],
            max_concurrent_trials=state["concurrency"],
            scheduler=_scheduler(state["scheduler"]),
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name="ray",
            storage_path=str(path),
            storage_filesystem=whole_file_filesystem(),  # a kill never tears its files
            verbose=0,
            failure_config=tune.FailureConfig(max_failures=state["max_failures"]),
            callbacks=[logger_callback(recorder, sp, rows, on_event, path, base)],
        ),
    )


def _start_before_trials(
    trial_data: MERData, base: Config, state: dict, path: Path, sp: Space
) -> tuple[Any, SharedStagesTask | None]:
    """The trials' data put in the object store once (every trial, the shared stages'
    task and, with --share-features, every card's holder read that one copy; its
    reference is returned), and the task that trains the stages every trial shares
    (shared_stages.py) started."""
    import ray

    data_ref = ray.put(trial_data.shareable())
    return data_ref, start_shared_stages(data_ref, base, state, sp, SearchFolder(path).cache_key())


def _before_trials(
    task: SharedStagesTask | None,
    state: dict,
    path: Path,
    sp: Space,
    base: Config,
    recorder: SearchRecorder,
    rows: dict,
    on_event: Callable[..., None],
) -> None:
    """Wait for the shared stages' task (its curves go to the parent run), recorded in
    search.yaml. Ctrl-C here stops the search as it would during its trials."""
    if task is None:
        return
    with _stopped_as_interrupted(recorder, path, rows, sp, base):
        done = task.wait(on_event, recorder.log_parent_history)
        if done:
            state["shared_stages"] = done
            SearchFolder(path).write_state(state)


@contextlib.contextmanager
def _stopped_as_interrupted(
    recorder: SearchRecorder, path: Path, rows: dict, sp: Space, base: Config
) -> Iterator[None]:
    """Ctrl-C in the block stops the search as it would during its trials: the truth
    recorded (_interrupted), and the resume hint raised."""
    try:
        yield
    except KeyboardInterrupt:
        _interrupted(recorder, path, rows, sp, base)
        raise SearchInterrupted(_resume_hint(path, "interrupted")) from None


def _scheduler(kind: str):
    from ray.tune.schedulers import ASHAScheduler

    from mer_tune.hpo.fold_pruner import FoldPruner

    if kind == "asha":
        return ASHAScheduler(grace_period=2, reduction_factor=2)
    return FoldPruner() if kind == "folds" else None


def resume(
    name: str,
    storage: str | Path = "mer-tune-runs",
    address: str | None = None,
    on_event: Callable[..., None] | None = None,
) -> SearchResult:
    """Continue an interrupted search (Ctrl-C, a killed driver, a reboot) where it stopped:
    finished trials are kept, unfinished ones rerun, Optuna's study continues, and the
    MLflow parent and child runs are reused, never duplicated. The data must still give
    the same fingerprint and the same holdout."""
    from ray import tune

    _tune_environment()
    folder = SearchFolder(storage_root(storage) / plain_name(name, "--resume"))
    path = folder.path
    state = folder.state() if folder.state_file.exists() else None
    if state is None:
        raise MerTuneError(f"--resume {name}: no search of that name in {path.parent}")
    missing = [
        k for k in ("trials", "tracking_uri", "experiment", "parent_run_id") if k not in state
    ]
    if missing:
        raise damaged(folder.state_file, f"no {missing[0]}")
    if state.get("finished"):
        raise UsageError(
            f"--resume {name}: the search finished at {state['finished']}; see `mer-tune "
            f"report {name}` (`mer-tune confirm {name}` reruns its confirm step)"
        )
    recorded = folder.results()
    if recorded is not None and len(recorded) and "trial_id" not in recorded.columns:
        raise damaged(folder.results_file, "no column 'trial_id'")  # what rows are keyed by
    batched = state.get("batch", 1) > 1
    unsaved = None if batched else tune_state.first_save_missing(folder.ray_dir)
    ended = 0 if recorded is None else len(recorded)
    if ended and "status" in recorded.columns:
        ended = int((recorded["status"] != "RUNNING").sum())
    if unsaved and ended:
        raise MerTuneError(
            f"--resume {name}: {folder.ray_dir} lacks Tune's saved {unsaved} while {ended} "
            "trials are recorded in results.csv; Tune's run cannot be continued without it"
        )
    base = folder.base()
    sp = folder.space(base)
    uri = stored_uri(state, path)
    check_reachable(uri)
    dataset, ho, trial_data = search_data(path, state, base)
    init_ray(address)
    recorder = SearchRecorder(uri, state["experiment"])
    recorder.resume_parent(state["parent_run_id"])
    rows: dict[str, dict] = {}
    for row in recorded.to_dict("records") if recorded is not None else []:
        rows[row["trial_id"]] = row
    on_event = on_event or (lambda *a, **k: None)
    goals = state.get("objectives") or [METRIC]
    warm = []
    if state.get("from_searches"):
        warm = import_trials(
            path.parent,
            state["from_searches"],
            dataset.fingerprint,
            sorted(ho.names),
            base,
            sp,
            goals,
        ).points
    if unsaved:
        # Killed during Tune's first save, as the first trial started: nothing ended, and
        # the trials start afresh (the unfinished ones' rows and runs are dropped).
        shutil.rmtree(folder.ray_dir)
        rows.clear()
        on_event(
            "note",
            row={
                "text": f"Tune's first save was not whole (no {unsaved}); "
                "the search's trials start afresh"
            },
        )
    if not batched and not folder.ray_dir.is_dir() and rows:
        raise MerTuneError(
            f"--resume {name}: {folder.ray_dir} is missing while {len(rows)} trials are "
            "recorded in results.csv; Tune's run cannot be continued without it"
        )
    with _stopped_as_interrupted(recorder, path, rows, sp, base):
        data_ref, task = _start_before_trials(trial_data, base, state, path, sp)
    _before_trials(task, state, path, sp, base, recorder, rows, on_event)
    if batched:
        # The actor's study is rebuilt from the finished trials (and any warm start).
        first = None if rows else sp.defaults(base)
        told = warm + told_from(rows, sp, goals)
        return _fit_batched(data_ref, base, state, path, sp, first, told, recorder, rows, on_event)
    if not folder.ray_dir.is_dir():  # stopped before its first trial started
        tuner = _new_tuner(data_ref, base, state, path, sp, warm, recorder, rows, on_event)
        return _fit(tuner, recorder, path, rows, sp, base, state)
    # A driver killed while Tune copied its state can leave its files from two steps.
    fixed = tune_state.agree(
        folder.ray_dir, optuna_searcher(sp, sp.defaults(base), state["seed"], path.name, [], goals)
    )
    if fixed:
        on_event(
            "note",
            row={
                "text": "Tune's saved state was from two moments (the driver "
                "was killed while saving it) and was brought in line: " + "; ".join(fixed)
            },
        )
    tuner = tune.Tuner.restore(
        str(SearchFolder(path).ray_dir),
        trainable=_trainable(data_ref, base, state, path),
        resume_unfinished=True,
        resume_errored=False,
        restart_errored=False,
        storage_filesystem=whole_file_filesystem(),
    )
    # The restored run config carries a pickled copy of the old callback; this process's
    # callback (with its live MLflow client and the rows read above) replaces it.
    tuner._local_tuner.get_run_config().callbacks = [
        logger_callback(recorder, sp, rows, on_event, path, base)
    ]
    return _fit(tuner, recorder, path, rows, sp, base, state)


def _tune_environment() -> None:
    """Settings Ray Tune reads when a Tuner starts."""
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # our progress lines replace Tune's tables
    # Save Tune's experiment state at every step (it is small), so a killed driver loses
    # as little as possible.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "0")


def stored_uri(state: dict, path: Path) -> str:
    """The search's tracking URI. Its password, if it had one, was not stored: an http(s)
    server takes it from MLFLOW_TRACKING_USERNAME / _PASSWORD; a database URI is taken
    whole from MLFLOW_TRACKING_URI when that is the same URI."""
    uri = state["tracking_uri"]
    if ":***@" not in uri:
        return uri
    given = os.environ.get("MLFLOW_TRACKING_URI", "")
    if given and redact(given) == uri:
        return given
    raise MerTuneError(
        f"{path / 'search.yaml'}: the tracking URI {uri} needs its password, which is never "
        "stored; set MLFLOW_TRACKING_URI to the full URI"
    )


def search_data(path: Path, state: dict, base: Config) -> tuple[MERData, Holdout, MERData]:
    """(the data a search started on, its holdout, what its trials see), checked against
    what the search recorded: the same fingerprint and holdout, or a one-line refusal."""
    recorded = state.get("dataset")
    if recorded is None:  # a search from before the data was recorded in full
        dataset = resolve(state["data"], DataOptions(classes=tuple(base.data.classes)))
    else:
        dataset = reopen(recorded, str(SearchFolder(path).state_file))
    ho = choose_holdout(
        dataset,
        state.get("holdout", 0.0),
        state.get("holdout_seed", state.get("seed", 0)),
        base.eval.folds,
        base.eval.select_on,
    )
    if len(ho):
        check_same(SearchFolder(path).holdout_file, ho)
    return dataset, ho, withhold(dataset, ho)


def _holders(path: Path, state: dict) -> str:
    """What names this search's card holders: its name and parent run, so that no other
    search (another --storage, or an earlier search of the same name) shares them."""
    return f"{path.name}.{state['parent_run_id']}"


def _release_cards(path: Path, state: dict) -> None:
    """End the search's card holders; a failure here only warns (the search's own
    outcome, or its interruption, is what the user needs to see)."""
    try:
        card_features.release(_holders(path, state))
    except Exception as err:  # noqa: BLE001
        print(f"note: could not end the cards' feature holders ({err})", file=sys.stderr)


def _trainable(data_ref: Any, base: Config, state: dict[str, Any], path: Path):
    """The trial function with its fixed arguments; `data_ref` is the object-store
    reference of the trials' data (a list around it, so that Tune stores the reference)."""
    from ray import tune

    trainable = tune.with_parameters(
        run_trial,
        data_ref=[data_ref],
        base=base.to_dict(),
        threads=max(1, int(state["cpus_per_trial"])),
        use_gpu=state["gpus_per_trial"] > 0,
        cache_dir=state["cache_dir"],
        timeout=state.get("trial_timeout"),
        outputs=str(SearchFolder(path).outputs),
        cache_key=SearchFolder(path).cache_key(),
        share_features=_holders(path, state) if state.get("share_features") else None,
    )
    return tune.with_resources(
        trainable, {"cpu": state["cpus_per_trial"], "gpu": state["gpus_per_trial"]}
    )


def _fit(
    tuner, recorder: SearchRecorder, path: Path, rows: dict, sp: Space, base: Config, state: dict
) -> SearchResult:
    try:
        tuner.fit()
    except KeyboardInterrupt:  # a second Ctrl-C: Tune stops at once
        _interrupted(recorder, path, rows, sp, base)
        raise SearchInterrupted(_resume_hint(path, "interrupted")) from None
    except BaseException:
        _interrupted(recorder, path, rows, sp, base)
        raise
    finally:
        if state.get("share_features"):
            _release_cards(path, state)
    # Keep exactly the trials Ray recorded: a driver killed between a trial's end and the
    # next experiment checkpoint leaves rows and runs that a resumed search redid.
    from ray.tune import ExperimentAnalysis

    trials = ExperimentAnalysis(str(SearchFolder(path).ray_dir)).trials
    # Tune ends fit() normally on the first Ctrl-C; what it leaves unfinished tells.
    done = [t for t in trials if t.status in ("TERMINATED", "ERROR")]
    if len(done) < len(trials) or len(trials) < state["trials"]:
        _interrupted(recorder, path, rows, sp, base)
        raise SearchInterrupted(
            _resume_hint(path, f"interrupted with {len(done)} of {state['trials']} trials done")
        )
    known = {t.trial_id for t in trials}
    for trial_id in set(rows) - known:
        del rows[trial_id]
    return _conclude(recorder, path, rows, sp, base, state)


def _fit_batched(
    data_ref: Any,
    base: Config,
    state: dict,
    path: Path,
    sp: Space,
    first_point: dict | None,
    told: list[tuple[dict, list[float]]],
    recorder: SearchRecorder,
    rows: dict,
    on_event: Callable[..., None],
) -> SearchResult:
    """The batched search (batched.py), with the same ending as a Tune search."""
    try:
        note = run_batches(
            data_ref,
            base.to_dict(),
            state,
            path,
            sp,
            first_point,
            told,
            recorder,
            rows,
            on_event,
            lambda: write_results(path, rows),
        )
    except KeyboardInterrupt:
        _interrupted(recorder, path, rows, sp, base)
        raise SearchInterrupted(
            _resume_hint(path, f"interrupted with {len(rows)} of {state['trials']} trials done")
        ) from None
    except BaseException:
        _interrupted(recorder, path, rows, sp, base)
        raise
    result = _conclude(recorder, path, rows, sp, base, state)
    result.notes += [note] if note else []
    return result


def _conclude(
    recorder: SearchRecorder, path: Path, rows: dict, sp: Space, base: Config, state: dict
) -> SearchResult:
    """After the last trial: results, best config, plots; the confirm step; the parent
    run ended."""
    recorder.drop_orphans(set(rows))
    result = _finish(recorder, path, rows, sp, base, "RUNNING")
    finished = not result.results.empty and (result.results["status"] == "FINISHED").any()
    if state.get("holdout_size") and state.get("confirm_top") and finished:
        from mer_tune.hpo.confirm_step import confirm_search

        try:
            result = confirm_search(path, recorder=recorder, result=result)
        except BaseException:
            recorder.finish_parent("FAILED")  # never left RUNNING; `mer-tune confirm` retries
            raise
    elif not state.get("holdout_size"):
        result.notes.append(
            "no outer holdout (--holdout 0): the best weighted F1 is the maximum of "
            f"{len(result.results)} noisy scores on the data that chose it, so it is optimistic"
        )
    recorder.finish_parent("FINISHED")
    # What --resume reads to refuse a search with nothing left to do.
    SearchFolder(path).write_state(state | {"finished": datetime.now().isoformat("T", "seconds")})
    return result


def _resume_hint(path: Path, what: str) -> str:
    return (
        f"search {path.name} {what}; continue it with: "
        f"mer-tune search --resume {path.name} --storage {path.parent}"
    )


def _reserve(root: Path, name: str, given: bool) -> Path:
    """Create the search folder atomically (mode 0700). A default name taken meanwhile
    (two searches started in the same second) becomes NAME-2, NAME-3, ..."""
    for attempt in range(1, 1000):
        path = root / (name if attempt == 1 else f"{name}-{attempt}")
        try:
            make_private_dir(path)
            return path
        except FileExistsError:
            if given:
                raise UsageError(
                    f"--name {name}: a search of that name exists in {root}; pick another name"
                ) from None
        except OSError as err:
            raise MerTuneError(
                f"{path}: cannot create the search folder ({err.strerror})"
            ) from None
    raise MerTuneError(f"{root}: no free name for {name}")


def _interrupted(recorder: SearchRecorder, path: Path, rows: dict, sp: Space, base: Config) -> None:
    """Record the truth of a stopped search: unfinished trials and their child runs, and
    the parent run, are KILLED (a resume reopens them)."""
    for trial_id, row in rows.items():
        if row.get("status") == "RUNNING":
            row["status"] = "KILLED"
            recorder.finish_child(trial_id, "KILLED", {"mer_tune.status": "KILLED"})
    _finish(recorder, path, rows, sp, base, "KILLED")


def _cache_location(cache_dir: str | Path | None, path: Path) -> str:
    """A URI (s3://, gs://, file://) as given; a folder made absolute; default under the search."""
    if cache_dir and "://" in str(cache_dir):
        if redact(str(cache_dir)) != str(cache_dir) or "@" in str(cache_dir).split("/")[2]:
            raise UsageError(
                f"--cache-dir {redact(str(cache_dir))}: credentials in the URI are not "
                "supported (they would be stored); give them to the filesystem through its "
                "environment (e.g. AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)"
            )
        return str(cache_dir)
    if cache_dir:  # checked now: the trials create it, and each would fail on its own
        check_folder_target(Path(cache_dir).resolve(), "--cache-dir")
    return str(Path(cache_dir or SearchFolder(path).default_cache).resolve())


def _finish(
    recorder: SearchRecorder, path: Path, rows: dict, sp: Space, base: Config, status: str
) -> SearchResult:
    """results.csv, the best config by inner score, the Optuna study and its plots. The
    parent run is ended with `status` unless that is RUNNING (the confirm step follows)."""
    table = write_results(path, rows)
    best_cfg, best_score = None, None
    finished = table[table["status"] == "FINISHED"] if not table.empty else table
    state = SearchFolder(path).state()
    goals = state.get("objectives") or [METRIC]
    notes: list[str] = []
    if len(goals) > 1 and not finished.empty:
        # A trade-off has no single best: the front, and the point --pick asks for.
        best_cfg, notes = front.write(path, table, goals, state.get("pick"), sp, base, recorder)
        best_score = float(finished[METRIC].max())
    elif not finished.empty:
        best = finished.loc[finished["weighted_f1"].idxmax()]
        best_score = float(best["weighted_f1"])
        best_cfg = trial_config(base, {k: best[k] for k in sp.params})
        write_text(SearchFolder(path).best_file, best_cfg.to_yaml())
        recorder.log_parent_metrics({"best_weighted_f1": best_score})
        recorder.set_tags(recorder.parent_id, {"mer_tune.best_trial": int(best["trial"])})
        recorder.log_artifact(recorder.parent_id, SearchFolder(path).best_file)
    recorder.log_artifact(recorder.parent_id, SearchFolder(path).results_file)
    study = _export_study(path, sp, table, goals)
    from mer_tune.hpo.report import study_plots

    plots = SearchFolder(path).plots
    plots.mkdir(exist_ok=True)
    if study_plots(study, plots, goals):
        recorder.log_artifacts(recorder.parent_id, plots, "plots")
    if status != "RUNNING":
        recorder.finish_parent(status)
    result = SearchResult(
        table, best_cfg, best_score, path, recorder.experiment_id, recorder.parent_id, recorder.uri
    )
    result.notes = notes
    if len(goals) > 1 and state.get("pick") and best_cfg is None and not finished.empty:
        result.pick_error = notes[-1]
    return result


def _export_study(path: Path, sp: Space, table: pd.DataFrame, goals: list[str]):
    """The search as an Optuna study in STORAGE/NAME/optuna.db (for optuna-dashboard and
    Optuna's plots); rebuilt from the results so it always matches them."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    states = {
        "FINISHED": optuna.trial.TrialState.COMPLETE,
        "PRUNED": optuna.trial.TrialState.PRUNED,
        "FAILED": optuna.trial.TrialState.FAIL,
    }
    db = SearchFolder(path).study_db
    db.unlink(missing_ok=True)
    study = optuna.create_study(
        storage=f"sqlite:///{db}",
        study_name=path.name,
        directions=directions(goals),
    )
    for row in table.to_dict("records"):
        state = states.get(row.get("status"))
        if state is None:
            continue
        values = [row.get(g) for g in goals] if state == optuna.trial.TrialState.COMPLETE else None
        if values is not None and any(unused(v) for v in values):
            continue  # a finished trial of an older search without every objective
        params = sp.values_of(row)
        study.add_trial(
            optuna.trial.create_trial(
                params=params,
                distributions={k: sp.params[k] for k in params},
                values=values,
                state=state,
                user_attrs={"ray_trial_id": row["trial_id"]},
            )
        )
    return study
