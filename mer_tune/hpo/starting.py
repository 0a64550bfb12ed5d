"""How a new search starts, from its SearchSettings: everything is checked first (the
config, the space, the MLflow store, the name, the data and its holdout, the cluster's
resources), and only then is anything written: the search folder, search.yaml, the
parent run. A failure before the parent run exists leaves nothing behind."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from mer_tune import user_yaml
from mer_tune.data.layout import DataOptions
from mer_tune.data.resolve import describe, resolve
from mer_tune.errors import MerTuneError, UsageError
from mer_tune.hpo import samplers
from mer_tune.hpo.batched import batch_size
from mer_tune.hpo.cache import new_key
from mer_tune.hpo.context import SearchContext, no_events
from mer_tune.hpo.folder import SearchFolder, storage_root
from mer_tune.hpo.gpu import check_packing, largest_config, own_copy_fraction, packing, trial_bytes
from mer_tune.hpo.holdout import SearchData, choose, withhold, write_csv
from mer_tune.hpo.ray_setup import card_bytes, init_ray
from mer_tune.hpo.record import SearchRecord
from mer_tune.hpo.settings import SearchSettings
from mer_tune.hpo.shared_stages import SharedStagesTask, start_shared_stages
from mer_tune.hpo.spaces import Space, load_space
from mer_tune.hpo.tracking import SearchRecorder, check_reachable, redact, resolve_uri
from mer_tune.hpo.warm_start import Imported, import_trials
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
class Plan:
    """What a new search settled on before anything is written."""

    settings: SearchSettings
    base: Config
    space: Space
    batch: int
    notes: list[str]
    uri: str
    folder: SearchFolder  # its name may still change if a default name is taken
    cache_dir: str | None
    data: SearchData
    imported: Imported | None
    data_options: DataOptions
    sampler: str  # samplers.resolve: `auto` decided


def plan(s: SearchSettings) -> Plan:
    """Every check that needs no cluster, in the order a user fixes them."""
    base = _base_config(s)
    sp = load_space(s.space, base)
    base = sp.base_config(base)
    batch, notes = _batching(s, sp)
    uri = resolve_uri(s.tracking_uri)
    check_reachable(uri)
    folder = _free_folder(s, sp)
    cache_dir = _cache_location(s.cache_dir, folder.path) if s.cache else None
    opts = s.data_options or DataOptions(classes=tuple(base.data.classes))
    dataset = resolve(s.data, opts)
    if "pseudo_precision" in s.objectives and dataset.hidden_labels is None:
        raise UsageError(
            "--objective pseudo_precision: needs the pool's true labels, which only "
            "synthetic data (or a label file for the pool) gives"
        )
    ho = choose(dataset, s.holdout, s.the_holdout_seed, base.eval.folds, base.eval.select_on)
    imported = None
    if s.from_searches:
        imported = import_trials(
            folder.path.parent, list(s.from_searches), dataset.fingerprint,
            sorted(ho.names), base, sp, list(s.objectives),
        )  # fmt: skip
    data = SearchData(dataset, ho, withhold(dataset, ho))
    sampler = samplers.resolve(s.sampler, sp, s.trials, list(s.objectives))
    return Plan(s, base, sp, batch, notes, uri, folder, cache_dir, data, imported, opts, sampler)


def _base_config(s: SearchSettings) -> Config:
    if isinstance(s.config, Config):
        base = s.config
    else:
        base = build_config() if s.config is None else load_config(s.config)
    fixed = {"eval.folds": s.folds} if s.folds else {}
    fixed |= {"eval.repeats": s.repeats} if s.repeats else {}
    base = with_overrides(base, {**s.overrides, **fixed, "seed": s.seed})
    if s.scheduler == "folds":
        from mer_tune.hpo.fold_pruner import check_folds

        check_folds(base.eval.folds, base.eval.repeats)
    return base


def _batching(s: SearchSettings, sp: Space) -> tuple[int, list[str]]:
    """Trials per Ray task, and notes on options a batched search does not apply."""
    batch, batch_note = batch_size(s.batch, sp, s.cache, s.scheduler)
    notes = [batch_note] if batch_note else []
    if batch > 1 and s.concurrency is not None:
        notes.append(
            f"--concurrency {s.concurrency}: a batched search scores its trials one after "
            "another in one Ray actor, so it does not apply (--batch 1 runs Tune trials)"
        )
    if batch > 1 and s.max_failures:
        notes.append(
            f"--max-failures {s.max_failures}: a batched search does not retry a trial (a "
            "failed one is recorded and the search goes on); --batch 1 runs Tune trials, "
            "which retry"
        )
    return batch, notes


def _free_folder(s: SearchSettings, sp: Space) -> SearchFolder:
    root = ensure_writable(storage_root(s.storage))
    if s.name is None:
        return SearchFolder(root / f"{sp.name}-{datetime.now():%Y%m%d-%H%M%S}")
    name = plain_name(s.name, "--name")
    if (root / name).exists():
        raise UsageError(
            f"--name {name}: a search of that name exists in {root}; pick another name"
        )
    return SearchFolder(root / name)


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


def resources(p: Plan) -> dict[str, Any]:
    """The record's resource fields, from the cluster (started or joined here)."""
    import ray

    s = p.settings
    init_ray(s.address)
    total_gpus = ray.cluster_resources().get("GPU", 0)
    total_cpus = ray.cluster_resources().get("CPU", 1)
    gpus = (1 if total_gpus >= 1 else 0) if s.gpus_per_trial is None else s.gpus_per_trial
    if gpus > total_gpus:
        raise UsageError(f"--gpus-per-trial {gpus:g}: the cluster has {total_gpus:g} GPUs")
    if s.cpus_per_trial > total_cpus:
        raise UsageError(
            f"--cpus-per-trial {s.cpus_per_trial:g}: the cluster has {total_cpus:g} CPUs"
        )
    concurrency = s.concurrency or max(1, int(total_cpus // max(s.cpus_per_trial, 1)))
    estimate, own_copy_gpus = None, gpus
    if gpus > 0:
        # The space's largest trial: a search that draws model.hidden or optim.batch_size
        # is packed for the largest it can draw.
        dataset = p.data.dataset
        largest = largest_config(p.base, p.space.params)
        whole = trial_bytes(dataset.dims, len(dataset.classes), dataset.nbytes(), largest)
        estimate, shared = packing(whole, dataset.nbytes(), s.share_features)
        card = card_bytes(gpus)
        if card:
            check_packing(estimate, gpus, card, shared)
        # What uploads its own copy even so (the confirm step's retraining) needs room for it.
        own_copy_gpus = own_copy_fraction(whole, gpus, card) if s.share_features else gpus
    return {
        "concurrency": concurrency,
        "gpus_per_trial": gpus,
        "gpu_memory_estimate_gib": round(estimate / 2**30, 2) if estimate else None,
        "own_copy_gpus": own_copy_gpus,
    }


def first_record(p: Plan, settled: dict[str, Any]) -> SearchRecord:
    """search.yaml's settings part, before the parent run exists."""
    s, eval_ = p.settings, p.base.eval
    return SearchRecord(
        space=p.space.name, trials=s.trials, seed=s.seed, folds=eval_.folds,
        repeats=eval_.repeats, select_on=eval_.select_on, holdout=s.holdout,
        holdout_seed=s.the_holdout_seed, holdout_size=len(p.data.holdout),
        confirm_top=s.confirm_top, confirm_seeds=s.confirm_seeds, scheduler=s.scheduler,
        cpus_per_trial=s.cpus_per_trial, data=p.data.dataset.source, cache=s.cache,
        max_failures=s.max_failures, trial_timeout=s.trial_timeout, batch=p.batch,
        share_features=s.share_features, cache_dir=p.cache_dir, sampler=p.sampler,
        **settled,
    )  # fmt: skip


def create(p: Plan, record: SearchRecord, on_event: Any) -> tuple[SearchContext, Any, Any]:
    """The search folder, its files and the parent run, now that every check has passed;
    the trials' data in the object store and the shared stages' task started. Returns
    (context, data reference, task)."""
    s = p.settings
    folder = SearchFolder(_reserve(p.folder.path.parent, p.folder.name, s.name is not None))
    write_text(folder.space_file, user_yaml.dump(p.space.to_dict(), sort_keys=False))
    # Signs the stage cache's entries; a staged search's steps share one key and cache.
    write_secret(folder.key_file, (s.cache_key or new_key()).hex())
    if len(p.data.holdout):
        write_csv(folder.holdout_file, p.data.dataset, p.data.holdout)
    task, recorder = None, None
    try:
        # The shared stages train while the MLflow store opens and the parent run starts.
        data_ref, task = start_trials_data(p.data, p.base, record, p.space, folder)
        recorder = SearchRecorder(p.uri, s.experiment)
        ctx = _open_parent(p, record, folder, recorder, on_event)
    except BaseException:  # an error or Ctrl-C before the trials: the task stops too
        if task is not None:
            task.cancel()
        if recorder is None or recorder.parent_id is None:
            # Recorded nowhere yet (no MLflow run): no half-made search is left behind.
            shutil.rmtree(folder.path, ignore_errors=True)
        raise
    return ctx, data_ref, task


def _open_parent(
    p: Plan, record: SearchRecord, folder: SearchFolder, recorder: SearchRecorder, on_event
) -> SearchContext:
    s = p.settings
    settings_part = record.settings()
    tags = {
        "mer_tune.data_fingerprint": p.data.dataset.fingerprint,
        "mer_tune.storage": str(folder.path),
    }
    parent = recorder.start_parent(folder.name, settings_part, tags | {"mer_tune.kind": "search"})
    if len(p.data.holdout):
        recorder.log_artifact(parent, folder.holdout_file)
    record = record.replace(
        parent_run_id=parent,
        tracking_uri=redact(p.uri),  # a password is never written down
        experiment=s.experiment,
        dataset=describe(s.data, p.data_options, p.data.dataset),
        baseline_search=s.baseline_search,
        from_searches=s.from_searches,
        warm_start_trials=len(p.imported.points) if p.imported else 0,
        objectives=s.objectives,
        pick=s.pick,
    )
    folder.write_record(record)
    write_text(folder.base_file, p.base.to_yaml())
    return SearchContext(folder, record, recorder, p.space, p.base, {}, on_event or no_events)


def start_trials_data(
    data: SearchData, base: Config, record: SearchRecord, sp: Space, folder: SearchFolder
) -> tuple[Any, SharedStagesTask | None]:
    """The trials' data put in the object store once (every trial, the shared stages'
    task and, with --share-features, every card's holder read that one copy; its
    reference is returned), and the task that trains the stages every trial shares
    (shared_stages.py) started."""
    import ray

    data_ref = ray.put(data.trials.shareable())
    return data_ref, start_shared_stages(data_ref, base, record, sp, folder.cache_key())


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
