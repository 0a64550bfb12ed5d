"""`mer-tune search`: Ray Tune runs the trials, Optuna suggests them, MLflow records them.

The driver owns every MLflow write (see tracking.py) through a Tune callback; trials only
run the pipeline and report to Tune. The dataset reaches trials once, through the object
store (`tune.with_parameters`).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from sklearn.metrics import confusion_matrix

from . import confirm as confirm_step
from . import holdout as outer
from . import pipeline
from .cache import StageStore, new_key
from .config import Config, build_config, with_overrides
from .data import HOLDOUT, TEST, DataOptions, MERData
from .datasets import describe, reopen, resolve
from .errors import MerTuneError, SearchInterrupted, UsageError
from .gpu import check_packing, trial_bytes
from .outputs import ensure_writable, make_private_dir, plain_name, write_secret, write_text
from .spaces import Space, load_space
from .tracking import SearchRecorder, check_reachable, redact, resolve_uri, ui_command

os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # our own progress lines replace Tune's tables
# Save Tune's experiment state at every step (it is small), so a killed driver loses
# as little as possible.
os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "0")
METRIC = "weighted_f1"
HOLDOUT_FILE = "holdout.csv"
CACHE_KEY_FILE = "cache.key"  # mode 0600: whoever reads it could forge cache entries


class TrialTimeout(RuntimeError):
    """A trial ran past --trial-timeout (checked at every stage and epoch)."""


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

    @property
    def ui_command(self) -> str:
        return ui_command(self.tracking_uri, self.experiment_id)


# ---------------------------------------------------------------- the trial


def run_trial(
    config: dict[str, Any],
    data: MERData,
    base: dict[str, Any],
    threads: int,
    use_gpu: bool,
    cache_dir: str | None,
    timeout: float | None = None,
    outputs: str | None = None,
    cache_key: str | None = None,
) -> None:
    """One Ray Tune trial: the full pipeline on `base` + the suggested values. With
    `outputs`, the fold models' predictions on the holdout and test names go to a file
    there, out of sight of the search (no metric, no column) until the confirm step."""
    import torch
    from ray import tune

    torch.set_num_threads(max(1, threads))
    cfg = with_overrides(build_config(base), config)
    key = bytes.fromhex(cache_key) if cache_key else None
    cache = StageStore(cache_dir, key=key, timeout=timeout) if cache_dir else None
    started = time.monotonic()

    def report(kind: str, **f: Any) -> None:
        if timeout and time.monotonic() - started > timeout:
            raise TrialTimeout(
                f"trial exceeded --trial-timeout {timeout:g} s (in {f.get('stage', kind)})"
            )
        # Per-epoch scores let ASHA compare trials; each is the best validation F1 of
        # the stage so far, comparable across trial lengths.
        if kind == "epoch" and "val_f1" in f:
            tune.report(
                {
                    METRIC: f["best_val_f1"],
                    "val_f1": f["val_f1"],
                    "train_loss": f["train_loss"],
                    "stage": f["stage"],
                    "fold": f["fold"],
                    "final": False,
                }
            )

    predict_idx = np.flatnonzero(np.isin(data.split, [HOLDOUT, TEST])) if outputs else None
    res = pipeline.run(
        data,
        cfg,
        cache=cache,
        report=report,
        device="cuda" if use_gpu and torch.cuda.is_available() else "cpu",
        predict_idx=predict_idx,
    )
    if outputs and res.extra_probs is not None and res.splits is not None:
        trial_id = tune.get_context().get_trial_id()
        confirm_step.save_trial_outputs(
            Path(outputs), trial_id, predict_idx, res.extra_probs, res.splits
        )
    final: dict[str, Any] = {
        METRIC: res.weighted_f1,
        "final": True,
        "cache_hits": ",".join(res.cache_hits),
    }
    final |= {f"f1_{c}": v for c, v in res.per_class_f1.items()}
    final |= {f"pseudo_added_{c}": v for c, v in res.pseudo_added.items()}
    final |= {f"seconds_{k}": v for k, v in res.seconds.items()}
    final |= {f"fold{k}_{METRIC}": v for k, v in enumerate(res.fold_f1)}
    if res.pseudo_precision is not None:
        final["pseudo_precision"] = res.pseudo_precision
    import ray

    final["node_id"] = ray.get_runtime_context().get_node_id()  # which Ray node ran it
    matrix = confusion_matrix(
        res.predictions["label"], res.predictions["pred"], labels=cfg.data.classes
    )
    final["confusion"] = json.dumps(matrix.tolist())
    tune.report(final)


# ---------------------------------------------------------------- Ray-side adapters


def _optuna_searcher(space: Space, first_point: dict, seed: int, study: str):
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    class TruthfulOptunaSearch(OptunaSearch):
        """Trials a scheduler stopped early are told to Optuna as PRUNED, not COMPLETE
        with a partial score (which would bias TPE toward short runs)."""

        def on_trial_complete(
            self, trial_id: str, result: dict | None = None, error: bool = False
        ) -> None:
            if (
                result
                and not error
                and not result.get("final")
                and trial_id not in self._completed_trials
            ):
                self._ot_study.tell(self._ot_trials[trial_id], state=optuna.trial.TrialState.PRUNED)
                self._completed_trials.add(trial_id)
                return
            super().on_trial_complete(trial_id, result, error)

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return TruthfulOptunaSearch(
        space=space.params,
        metric=METRIC,
        mode="max",
        points_to_evaluate=[first_point],
        sampler=optuna.samplers.TPESampler(seed=seed),
        study_name=study,
        # In memory: Ray checkpoints the searcher with the experiment state, so a resumed
        # search continues the very study Ray knows. `_finish` exports it to optuna.db.
        storage=None,
    )


def _logger_callback(
    recorder: SearchRecorder,
    space: Space,
    rows: dict,
    on_event: Callable[..., None],
    path: Path,
    base: Config,
):
    from ray.tune import Callback

    class MlflowTrialLogger(Callback):
        """Child runs, per-epoch metrics and the results table, written by the driver."""

        def __init__(self) -> None:
            # Rows read back on resume keep their trial numbers.
            self.order: dict[str, int] = {tid: int(r["trial"]) for tid, r in rows.items()}
            self.started: dict[str, float] = {}

        def _save(self) -> None:
            # After every finished trial, so an interrupted search loses no result.
            _write_results(path, rows)

        def _row(self, trial, trials: list) -> dict:
            if trial.trial_id not in self.order:
                # Numbered in the order Tune created the trials (the order Optuna suggested
                # them), not the order they started: trial 0 is always the first point,
                # the base config's values, whatever the concurrency.
                pos = next((i for i, t in enumerate(trials) if t.trial_id == trial.trial_id), None)
                taken = set(self.order.values())
                fresh = pos is not None and pos not in taken
                self.order[trial.trial_id] = pos if fresh else max(taken, default=-1) + 1
            number = self.order[trial.trial_id]
            row = rows.setdefault(trial.trial_id, {"trial": number, "trial_id": trial.trial_id})
            row.update({k: trial.config.get(k) for k in space.params})
            return row

        def on_trial_start(self, iteration, trials, trial, **info) -> None:
            row = self._row(trial, trials)
            self.started.setdefault(trial.trial_id, time.time())
            recorder.start_child(trial.trial_id, f"trial-{row['trial']:03d}", dict(trial.config))
            row["status"] = "RUNNING"
            on_event("start", row=row)

        def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
            if not result.get("final"):
                # The per-epoch score is logged as best_val_f1: weighted_f1 is the final score alone.
                metrics = {
                    "val_f1": result.get("val_f1"),
                    "train_loss": result.get("train_loss"),
                    "best_val_f1": result.get(METRIC),
                }
                recorder.log_metrics(trial.trial_id, metrics, step=result.get("training_iteration"))

        def on_trial_complete(self, iteration, trials, trial, **info) -> None:
            row, result = self._row(trial, trials), trial.last_result or {}
            row["seconds"] = round(time.time() - self.started.get(trial.trial_id, time.time()), 2)
            if result.get("final"):
                final = {
                    k: v
                    for k, v in result.items()
                    if k.startswith(("f1_", "pseudo_", "seconds_", "fold"))
                }
                recorder.log_metrics(trial.trial_id, final | {METRIC: result[METRIC]})
                seconds = [v for k, v in final.items() if k.startswith("seconds_")]
                row["pipeline_seconds"] = round(sum(seconds), 3)
                row.update(status="FINISHED", weighted_f1=result[METRIC])
                status = "FINISHED"
            else:  # stopped early by the scheduler
                row.update(status="PRUNED", weighted_f1=result.get(METRIC))
                status = "KILLED"
            tags = {
                "ray.node_ip": result.get("node_ip", ""),
                "ray.hostname": result.get("hostname", ""),
                "ray.node_id": result.get("node_id", ""),
                "mer_tune.cached_stages": result.get("cache_hits", ""),
                "mer_tune.status": row["status"],
            }
            _trial_artifacts(recorder, trial, result, base)
            recorder.finish_child(trial.trial_id, status, tags)
            self._save()
            on_event("complete", row=row)

        def on_trial_error(self, iteration, trials, trial, **info) -> None:
            row = self._row(trial, trials)
            message = _error_message(trial)
            row.update(
                status="FAILED",
                error=message,
                seconds=round(time.time() - self.started.get(trial.trial_id, time.time()), 2),
            )
            result = trial.last_result or {}
            recorder.finish_child(
                trial.trial_id,
                "FAILED",
                {"error": message, "ray.node_ip": result.get("node_ip", "")},
            )
            self._save()
            on_event("error", row=row)

    return MlflowTrialLogger()


def _trial_artifacts(recorder: SearchRecorder, trial, result: dict, base: Config) -> None:
    """The resolved config as YAML and, for a finished trial, its confusion matrix."""
    from .report import confusion_png

    run_id = recorder.children.get(trial.trial_id)
    if run_id is None:
        return
    with tempfile.TemporaryDirectory() as tmp:
        cfg = with_overrides(base, dict(trial.config))
        (Path(tmp) / "config.yaml").write_text(cfg.to_yaml())
        if result.get("confusion"):
            confusion_png(
                json.loads(result["confusion"]),
                cfg.data.classes,
                Path(tmp) / "confusion_matrix.png",
            )
        recorder.client.log_artifacts(run_id, tmp)


def _error_message(trial) -> str:
    """The exception line of the trial's error (its local error file is written before
    Tune's callbacks run; the copy in storage only after a sync)."""
    text = ""
    try:
        if trial.error_file and Path(trial.error_file).exists():
            text = Path(trial.error_file).read_text()
        else:
            text = trial.get_error() or ""
    except OSError:
        text = ""
    lines = [ln.strip() for ln in str(text).strip().splitlines() if ln.strip()]
    errors = [ln for ln in lines if "Error" in ln.split(":")[0] or "Exception" in ln.split(":")[0]]
    return (errors or lines or ["trial failed"])[-1][:2000]


# ---------------------------------------------------------------- the search


def _check_address(address: str | None) -> None:
    if not address or address == "auto" or address.startswith("ray://"):
        return
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=3):
            pass
    except (OSError, ValueError):
        raise MerTuneError(f"--address {address}: no Ray cluster answers there") from None


def _init_ray(address: str | None) -> None:
    import ray

    if ray.is_initialized():
        return
    _check_address(address)
    # A Ray started here for this search serves this machine only: its ports listen on
    # 127.0.0.1, not on the machine's network address.
    local = {} if address or os.environ.get("RAY_ADDRESS") else {"_node_ip_address": "127.0.0.1"}
    try:
        ray.init(
            address=address,
            include_dashboard=False,
            configure_logging=False,
            log_to_driver=False,
            **local,
        )
    except (ConnectionError, RuntimeError) as err:
        raise MerTuneError(f"--address {address}: cannot connect to Ray ({err})") from None


def _storage_root(storage: str | Path) -> Path:
    """The search folder's parent: a path, on shared storage (NFS) for a cluster."""
    if "://" in str(storage):
        raise UsageError(
            f"--storage {storage}: URIs are not supported; give a folder every node can "
            "reach (an NFS mount); the stage cache alone can live at a URI (--cache-dir)"
        )
    return Path(storage).resolve()


def _card_bytes(gpus: float) -> int | None:
    """Memory of the card a trial would get, asked on a GPU node (None without CUDA, as
    with a fake GPU resource, or when no GPU node comes up within a minute)."""
    import ray

    @ray.remote(num_gpus=gpus, num_cpus=0)
    def probe() -> int | None:
        import torch

        if not torch.cuda.is_available():
            return None
        return torch.cuda.get_device_properties(0).total_memory

    ref = probe.remote()
    done, _ = ray.wait([ref], timeout=60)
    if not done:
        ray.cancel(ref, force=True)
        return None
    return ray.get(ref)


def search(
    space: str = "thresholds",
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
    on_event: Callable[..., None] | None = None,
) -> SearchResult:
    """Run a hyperparameter search and return its results table and best config.

    Before any trial, a stratified `holdout` share of the labelled set is set aside
    (seed `holdout_seed`, default `seed`); trials select on the rest. At the end the
    `confirm_top` best trials and the baseline (trial 0) are scored on the holdout
    (`res.confirm`) and `res.verdict` says whether the winner beats the baseline.

    Example (in a notebook)::

        import mer_tune
        res = mer_tune.search(space="thresholds", trials=16, data="synthetic:small")
        res.results.sort_values("weighted_f1", ascending=False).head()
        res.confirm, res.verdict.text, res.best_config.to_yaml()
    """
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    if trials < 1:
        raise UsageError(f"--trials {trials}: must be at least 1")
    if scheduler not in ("none", "asha"):
        raise UsageError(f"--scheduler {scheduler}: expected asha or none")
    if confirm_top < 0 or confirm_seeds < 0:
        raise UsageError("--confirm-top and --confirm-seeds must be 0 or more")
    on_event = on_event or (lambda *a, **k: None)
    base = (
        config
        if isinstance(config, Config)
        else (build_config() if config is None else _load(config))
    )
    fixed = {"eval.folds": folds} if folds else {}
    fixed |= {"eval.repeats": repeats} if repeats else {}
    base = with_overrides(base, {**(overrides or {}), **fixed, "seed": seed})
    sp = load_space(space, base)
    base = sp.base_config(base)
    uri = resolve_uri(tracking_uri)
    check_reachable(uri)
    root = ensure_writable(_storage_root(storage))
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
    holdout_seed = seed if holdout_seed is None else holdout_seed
    ho = outer.choose(dataset, holdout, holdout_seed, base.eval.folds, base.eval.select_on)
    trial_data = outer.withhold(dataset, ho)

    _init_ray(address)
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
    gpu_estimate = None
    if gpus > 0:
        gpu_estimate = trial_bytes(dataset.dims, len(dataset.classes), dataset.nbytes(), base)
        card = _card_bytes(gpus)
        if card:
            check_packing(gpu_estimate, gpus, card)

    # Every check has passed: only now does anything get written.
    path = _reserve(root, name, given)
    name = path.name
    shutil.copyfile(sp.path, path / "space.yaml")  # resume reads this copy
    # Signs the stage cache's entries; a staged search's steps share one key and cache.
    write_secret(path / CACHE_KEY_FILE, (cache_key or new_key()).hex())
    if len(ho):
        outer.write_csv(path / HOLDOUT_FILE, dataset, ho)
    recorder = SearchRecorder(uri, experiment)
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
    }
    tags = {"mer_tune.data_fingerprint": dataset.fingerprint, "mer_tune.storage": str(path)}
    parent = recorder.start_parent(name, settings, tags | {"mer_tune.kind": "search"})
    if len(ho):
        recorder.client.log_artifact(parent, str(path / HOLDOUT_FILE))
    state = settings | {
        "parent_run_id": parent,
        "tracking_uri": redact(uri),  # a password is never written down
        "experiment": experiment,
        "cache_dir": cache_location,
        "dataset": describe(data, opts, dataset),
        "baseline_search": baseline_search,
    }
    write_text(path / "search.yaml", yaml.safe_dump(state))
    write_text(path / "base_config.yaml", base.to_yaml())

    searcher = _optuna_searcher(sp, sp.defaults(base), seed, name)
    rows: dict[str, dict] = {}
    callback = _logger_callback(recorder, sp, rows, on_event, path, base)
    tuner = tune.Tuner(
        _trainable(trial_data, base, state, path),
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            metric=METRIC,
            mode="max",
            num_samples=trials,
            max_concurrent_trials=concurrency,
            scheduler=ASHAScheduler(grace_period=2, reduction_factor=2)
            if scheduler == "asha"
            else None,
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name="ray",
            storage_path=str(path),
            verbose=0,
            failure_config=tune.FailureConfig(max_failures=max_failures),
            callbacks=[callback],
        ),
    )
    return _fit(tuner, recorder, path, rows, sp, base, state)


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

    path = _storage_root(storage) / plain_name(name, "--resume")
    if not (path / "search.yaml").exists() or not (path / "ray").is_dir():
        raise UsageError(f"--resume {name}: no search of that name in {path.parent}")
    state = yaml.safe_load((path / "search.yaml").read_text())
    base = _load(path / "base_config.yaml")
    sp = load_space(str(path / "space.yaml"), base)
    uri = stored_uri(state, path)
    check_reachable(uri)
    _, _, trial_data = search_data(path, state, base)
    _init_ray(address)
    recorder = SearchRecorder(uri, state["experiment"])
    recorder.resume_parent(state["parent_run_id"])
    rows: dict[str, dict] = {}
    if (path / "results.csv").exists():
        for row in pd.read_csv(path / "results.csv").to_dict("records"):
            rows[row["trial_id"]] = row
    tuner = tune.Tuner.restore(
        str(path / "ray"),
        trainable=_trainable(trial_data, base, state, path),
        resume_unfinished=True,
        resume_errored=False,
        restart_errored=False,
    )
    # The restored run config carries a pickled copy of the old callback; this process's
    # callback (with its live MLflow client and the rows read above) replaces it.
    tuner._local_tuner.get_run_config().callbacks = [
        _logger_callback(recorder, sp, rows, on_event or (lambda *a, **k: None), path, base)
    ]
    return _fit(tuner, recorder, path, rows, sp, base, state)


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


def search_data(path: Path, state: dict, base: Config) -> tuple[MERData, outer.Holdout, MERData]:
    """(the data a search started on, its holdout, what its trials see), checked against
    what the search recorded: the same fingerprint and holdout, or a one-line refusal."""
    recorded = state.get("dataset")
    if recorded is None:  # a search from before the data was recorded in full
        dataset = resolve(state["data"], DataOptions(classes=tuple(base.data.classes)))
    else:
        dataset = reopen(recorded, str(path / "search.yaml"))
    ho = outer.choose(
        dataset,
        state.get("holdout", 0.0),
        state.get("holdout_seed", state.get("seed", 0)),
        base.eval.folds,
        base.eval.select_on,
    )
    if len(ho):
        outer.check_same(path / HOLDOUT_FILE, ho)
    return dataset, ho, outer.withhold(dataset, ho)


def _trainable(dataset: MERData, base: Config, state: dict[str, Any], path: Path):
    from ray import tune

    trainable = tune.with_parameters(
        run_trial,
        data=dataset.shareable(),
        base=base.to_dict(),
        threads=max(1, int(state["cpus_per_trial"])),
        use_gpu=state["gpus_per_trial"] > 0,
        cache_dir=state["cache_dir"],
        timeout=state.get("trial_timeout"),
        outputs=str(path / confirm_step.OUTPUTS),
        cache_key=read_cache_key(path),
    )
    return tune.with_resources(
        trainable, {"cpu": state["cpus_per_trial"], "gpu": state["gpus_per_trial"]}
    )


def _fit(
    tuner, recorder: SearchRecorder, path: Path, rows: dict, sp: Space, base: Config, state: dict
) -> SearchResult:
    try:
        tuner.fit()
    except BaseException:
        _interrupted(recorder, path, rows, sp, base)
        raise
    # Keep exactly the trials Ray recorded: a driver killed between a trial's end and the
    # next experiment checkpoint leaves rows and runs that a resumed search redid.
    from ray.tune import ExperimentAnalysis

    trials = ExperimentAnalysis(str(path / "ray")).trials
    # Tune ends fit() normally on the first Ctrl-C; what it leaves unfinished tells.
    done = [t for t in trials if t.status in ("TERMINATED", "ERROR")]
    if len(done) < len(trials) or len(trials) < state["trials"]:
        _interrupted(recorder, path, rows, sp, base)
        raise SearchInterrupted(
            f"search {path.name} interrupted with {len(done)} of {state['trials']} trials "
            f"done; continue it with: mer-tune search --resume {path.name} "
            f"--storage {path.parent}"
        )
    known = {t.trial_id for t in trials}
    for trial_id in set(rows) - known:
        del rows[trial_id]
    recorder.drop_orphans(set(rows))
    result = _finish(recorder, path, rows, sp, base, "RUNNING")
    finished = not result.results.empty and (result.results["status"] == "FINISHED").any()
    if state.get("holdout_size") and state.get("confirm_top") and finished:
        from .confirming import confirm_search

        result = confirm_search(path, recorder=recorder, result=result)
    elif not state.get("holdout_size"):
        result.notes.append(
            "no outer holdout (--holdout 0): the best weighted F1 is the maximum of "
            f"{len(result.results)} noisy scores on the data that chose it, so it is optimistic"
        )
    recorder.finish_parent("FINISHED")
    return result


def read_cache_key(path: Path) -> str | None:
    """The hex key that signs a search's stage cache entries (None: an older search)."""
    key_file = path / CACHE_KEY_FILE
    return key_file.read_text().strip() if key_file.exists() else None


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
    return str(Path(cache_dir or path / "cache").resolve())


def _load(config: str | Path) -> Config:
    from .config import load_config

    return load_config(config)


def _write_results(path: Path, rows: dict) -> pd.DataFrame:
    table = pd.DataFrame(sorted(rows.values(), key=lambda r: r["trial"]))
    if not table.empty and "weighted_f1" not in table:
        table["weighted_f1"] = float("nan")
    write_text(path / "results.csv", table.to_csv(index=False))
    return table


def _finish(
    recorder: SearchRecorder, path: Path, rows: dict, sp: Space, base: Config, status: str
) -> SearchResult:
    """results.csv, the best config by inner score, the Optuna study and its plots. The
    parent run is ended with `status` unless that is RUNNING (the confirm step follows)."""
    table = _write_results(path, rows)
    best_cfg, best_score = None, None
    finished = table[table["status"] == "FINISHED"] if not table.empty else table
    if not finished.empty:
        best = finished.loc[finished["weighted_f1"].idxmax()]
        best_score = float(best["weighted_f1"])
        best_cfg = with_overrides(base, {k: _plain(best[k]) for k in sp.params})
        write_text(path / "best_config.yaml", best_cfg.to_yaml())
        recorder.client.log_metric(recorder.parent_id, "best_weighted_f1", best_score)
        recorder.set_tags(recorder.parent_id, {"mer_tune.best_trial": int(best["trial"])})
        recorder.client.log_artifact(recorder.parent_id, str(path / "best_config.yaml"))
    recorder.client.log_artifact(recorder.parent_id, str(path / "results.csv"))
    study = _export_study(path, sp, table)
    from .report import study_plots

    plots = path / "plots"
    plots.mkdir(exist_ok=True)
    if study_plots(study, plots):
        recorder.client.log_artifacts(recorder.parent_id, str(plots), "plots")
    if status != "RUNNING":
        recorder.finish_parent(status)
    return SearchResult(
        table, best_cfg, best_score, path, recorder.experiment_id, recorder.parent_id, recorder.uri
    )


def _export_study(path: Path, sp: Space, table: pd.DataFrame):
    """The search as an Optuna study in STORAGE/NAME/optuna.db (for optuna-dashboard and
    Optuna's plots); rebuilt from the results so it always matches them."""
    import optuna

    states = {
        "FINISHED": optuna.trial.TrialState.COMPLETE,
        "PRUNED": optuna.trial.TrialState.PRUNED,
        "FAILED": optuna.trial.TrialState.FAIL,
    }
    db = path / "optuna.db"
    db.unlink(missing_ok=True)
    study = optuna.create_study(
        storage=f"sqlite:///{db}", study_name=path.name, direction="maximize"
    )
    for row in table.to_dict("records"):
        state = states.get(row.get("status"))
        if state is None:
            continue
        value = row.get("weighted_f1") if state == optuna.trial.TrialState.COMPLETE else None
        params = {k: _plain(row[k]) for k in sp.params}
        study.add_trial(
            optuna.trial.create_trial(
                params=params,
                distributions=sp.params,
                value=value,
                state=state,
                user_attrs={"ray_trial_id": row["trial_id"]},
            )
        )
    return study


def _plain(value: Any) -> Any:
    """numpy scalars from the results table back to plain Python values."""
    return value.item() if hasattr(value, "item") else value
