"""The confirm step of a search, driver side: read what it needs from the search folder,
retrain on Ray when `--confirm-seeds` asks for it, and record the outcome in the folder
(confirm.csv, verdict.json, best_config.yaml, results.csv) and on the MLflow parent run.
The scoring itself is `confirm.confirm`, a pure function."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mer_tune.errors import MerTuneError
from mer_tune.hpo import confirm, objectives
from mer_tune.hpo.folder import SearchFolder
from mer_tune.hpo.holdout import search_data
from mer_tune.hpo.ray_setup import init_ray
from mer_tune.hpo.record import SearchRecord
from mer_tune.hpo.result import SearchResult
from mer_tune.hpo.spaces import Space
from mer_tune.hpo.tracking import SearchRecorder
from mer_tune.method.config import Config, build_config, with_overrides
from mer_tune.outputs import write_text

HOLDOUT_COLUMNS = ["holdout_f1", "holdout_low", "holdout_high", "optimism_gap", "confirmed"]
TRADE_OFF = "a multi-objective search adopts nothing from it: --pick chooses best_config.yaml"


def _folder_state(path: Path) -> tuple[SearchRecord, Config, Space]:
    folder = SearchFolder(path)
    if not folder.state_file.exists():
        raise MerTuneError(f"{folder.state_file}: missing")
    base = folder.base()
    return folder.record(), base, folder.space(base)


def _baseline(path: Path, record: SearchRecord) -> tuple[confirm.Candidate | None, str, Path]:
    """The baseline: trial 0 of this search, or of the first step of a staged search."""
    folder = path.parent / record.baseline_search if record.baseline_search else path
    _, base, sp = _folder_state(folder)
    results = SearchFolder(folder).required_results()
    point = sp.defaults(base)
    paper = point == sp.defaults(sp.base_config(build_config()))
    name = "the paper's values" if paper else "the baseline (trial 0)"
    row = results[(results["trial"] == confirm.BASELINE_TRIAL) & (results["status"] == "FINISHED")]
    if row.empty or not _same_point(row.iloc[0], point):
        return None, name, folder
    return (
        confirm.candidate_from(row.iloc[0].to_dict(), base, list(sp.params), folder),
        name,
        folder,
    )


def _same_point(row: pd.Series, point: dict) -> bool:
    """Whether a results row holds exactly the values of `point` (the baseline's)."""
    for key, value in point.items():
        got = row[key]
        if isinstance(value, int | float) and not isinstance(value, bool):
            if not np.isclose(float(got), float(value)):
                return False
        elif str(got) != str(value):
            return False
    return True


def confirm_search(
    path: Path,
    top: int | None = None,
    seeds: int | None = None,
    address: str | None = None,
    recorder: SearchRecorder | None = None,
    result: SearchResult | None = None,
) -> SearchResult:
    """Confirm the search in folder `path` (at the end of a search, or again later with
    other `top` / `seeds`); returns its SearchResult with `confirm` and `verdict` set."""
    started = time.perf_counter()
    folder = SearchFolder(path)
    results = folder.required_results()
    record, base, sp = _folder_state(path)
    top = record.confirm_top if top is None else top
    seeds = record.confirm_seeds if seeds is None else seeds
    if not (results["status"] == "FINISHED").any():
        raise MerTuneError(f"{path.name}: no finished trial to confirm")
    if not record.holdout_size:
        raise MerTuneError(
            f"{path.name}: this search ran without an outer holdout (--holdout 0); "
            "there is nothing to confirm on"
        )
    data = search_data(folder, record, base)
    baseline, baseline_name, baseline_folder = _baseline(path, record)
    candidates, notes = _candidates(path, record, results, base, sp, top, baseline, baseline_folder)
    if baseline is None:
        notes.append("the baseline trial (trial 0) did not finish: no verdict against it")
    retrain = None
    if seeds:
        init_ray(address)
        retrain = ray_retrain(data.trials, record, folder.cache_key())
    outcome = confirm.confirm(
        data.dataset, data.holdout, candidates, baseline, seeds, record.seed, retrain,
        baseline_name,
    )  # fmt: skip
    outcome.notes = notes + outcome.notes + _selection_note(len(candidates))
    if len(record.objectives) > 1:
        _adopt_nothing(outcome)
    confirm.write(path, outcome, seeds, time.perf_counter() - started)
    table = _results_with_holdout(results, outcome.table, path)
    if recorder is None:
        recorder = SearchRecorder(record.uri(folder.state_file), record.experiment)
        recorder.parent_id = record.parent_run_id
    _log(recorder, path, outcome)
    if result is None:
        finished = table[table["status"] == "FINISHED"]
        result = SearchResult(
            table, outcome.adopted, float(finished["weighted_f1"].max()), path,
            recorder.experiment_id, recorder.parent_id, recorder.uri,
        )  # fmt: skip
    result.results = table
    result.confirm = outcome.table
    result.verdict = outcome.verdict
    if outcome.adopted is not None:  # never on a trade-off: the pick decides there
        result.best_config = outcome.adopted
    result.holdout_size = len(data.holdout)
    result.notes = list(result.notes) + outcome.notes
    return result


def _candidates(
    path: Path,
    record: SearchRecord,
    results: pd.DataFrame,
    base: Config,
    sp: Space,
    top: int,
    baseline: confirm.Candidate | None,
    baseline_folder: Path,
) -> tuple[list[confirm.Candidate], list[str]]:
    """The trials to confirm besides the baseline: the --confirm-top best, or on a
    trade-off every point of the Pareto front."""
    own_baseline = baseline is not None and baseline_folder == path
    if len(record.objectives) > 1:
        front_trials = objectives.pareto_front(results, list(record.objectives))["trial"]
        chosen = [int(t) for t in front_trials if not own_baseline or t != baseline.trial]
        notes = [f"confirmed the {len(chosen)} Pareto-front trial(s) besides the baseline"]
    else:
        chosen, notes = confirm.pick_candidates(
            results, top, baseline.trial if own_baseline else None
        )
    rows = results.set_index("trial")
    candidates = [
        confirm.candidate_from(rows.loc[t].to_dict() | {"trial": t}, base, list(sp.params), path)
        for t in chosen
    ]
    return candidates, notes


def _adopt_nothing(outcome: confirm.Confirmation) -> None:
    """The verdict speaks of weighted F1 alone: on a trade-off it adopts nothing."""
    outcome.verdict = dataclasses.replace(outcome.verdict, consequence=TRADE_OFF, adopted=None)
    outcome.adopted = None
    if "adopted" in outcome.table:
        outcome.table["adopted"] = False


def _selection_note(k: int) -> list[str]:
    if k < 2:
        return []
    return [
        f"the winner is the best of {k} candidates on the holdout: its gain's p-value and "
        f"interval are adjusted for the {k} (Holm), its holdout score itself leans slightly high"
    ]


def _results_with_holdout(results: pd.DataFrame, table: pd.DataFrame, path: Path) -> pd.DataFrame:
    """results.csv with the holdout columns filled for this search's confirmed trials
    only (a staged search's baseline lives in its first step's folder)."""
    merged = results.drop(columns=[c for c in HOLDOUT_COLUMNS if c in results])
    extra = table[["trial", *HOLDOUT_COLUMNS[:-1]]].copy()
    extra["confirmed"] = np.where(table["adopted"], "adopted", table["role"])
    merged = merged.merge(extra[table["search"] == path.name], on="trial", how="left")
    write_text(SearchFolder(path).results_file, merged.to_csv(index=False))
    return merged


def _log(recorder: SearchRecorder, path: Path, outcome: confirm.Confirmation) -> None:
    """The parent run's holdout metrics, verdict tag, confirm plot and files."""
    from mer_tune.hpo.report import confirm_png

    v = outcome.verdict
    winner = outcome.table[outcome.table["winner"]]
    metrics: dict[str, float] = {}
    if not winner.empty:
        metrics |= {
            "holdout_f1": float(winner["holdout_f1"].iloc[0]),
            "optimism_gap": float(winner["optimism_gap"].iloc[0]),
        }
        for column in ("retrained_f1", "truth_f1"):  # with --confirm-seeds; on synthetic data
            if column in winner:
                metrics[f"winner_{column}"] = float(winner[column].iloc[0])
    if v.gain is not None:
        metrics |= {
            "gain_vs_baseline": v.gain,
            "gain_vs_baseline_low": v.low,
            "gain_vs_baseline_high": v.high,
        }
    if v.p_adjusted is not None:
        metrics |= {
            "gain_vs_baseline_p_adjusted": v.p_adjusted,
            "gain_vs_baseline_adjusted_low": v.adjusted_low,
            "gain_vs_baseline_adjusted_high": v.adjusted_high,
        }
    base = outcome.table[outcome.table["role"] == "baseline"]
    if not base.empty:
        metrics["baseline_holdout_f1"] = float(base["holdout_f1"].iloc[0])
    if "truth_f1" in outcome.table:
        adopted = outcome.table[outcome.table["adopted"]]
        if not adopted.empty:
            metrics["truth_f1_adopted"] = float(adopted["truth_f1"].iloc[0])
        if not base.empty:
            metrics["truth_f1_baseline"] = float(base["truth_f1"].iloc[0])
    recorder.log_parent_metrics(metrics)
    recorder.set_tags(
        recorder.parent_id,
        {"mer_tune.verdict": v.text, "mer_tune.verdict_outcome": v.outcome},
    )
    plots = SearchFolder(path).plots
    plots.mkdir(exist_ok=True)
    confirm_png(outcome.table, plots / "confirm.png")
    recorder.log_artifact(recorder.parent_id, plots / "confirm.png", "plots")
    for name in (confirm.CONFIRM_FILE, confirm.VERDICT_FILE, "results.csv", "best_config.yaml"):
        if (path / name).exists():
            recorder.log_artifact(recorder.parent_id, path / name)


# ---------------------------------------------------------------- retraining on Ray


def _retrain_one(
    data: Any,
    cfg: dict,
    idx: np.ndarray,
    threads: int,
    use_gpu: bool,
    cache_dir: str | None,
    cache_key: str | None,
) -> np.ndarray:
    import torch

    from mer_tune.hpo.cache import StageStore
    from mer_tune.method import malloc, pipeline

    torch.set_num_threads(max(1, threads))
    malloc.tune_malloc()
    device = "cuda" if use_gpu and torch.cuda.is_available() else "cpu"
    key = bytes.fromhex(cache_key) if cache_key else None
    cache = StageStore(cache_dir, key=key) if cache_dir else None
    return pipeline.fit_all(data, build_config(cfg), idx, cache=cache, device=device)


def ray_retrain(trial_data: Any, record: SearchRecord, cache_key: str | None) -> confirm.Retrain:
    """Retraining as Ray tasks with a trial's resources, on the data the trials saw."""

    def retrain(jobs: list[tuple[Config, int]], idx: np.ndarray) -> list[np.ndarray]:
        import ray

        ref = ray.put(trial_data.shareable())
        # A retraining uploads its own features: with --share-features the trials'
        # fraction of a card may hold only the part beside the card's shared copy.
        task = ray.remote(num_cpus=record.cpus_per_trial, num_gpus=record.retrain_gpus)(
            _retrain_one
        )
        refs = [
            task.remote(
                ref,
                with_overrides(cfg, {"seed": seed}).to_dict(),
                idx,
                int(record.cpus_per_trial),
                record.gpus_per_trial > 0,
                record.cache_dir,
                cache_key,
            )
            for cfg, seed in jobs
        ]
        return ray.get(refs)

    return retrain
