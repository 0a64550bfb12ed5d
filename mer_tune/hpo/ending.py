"""How a search ends: results.csv, the best config (or the Pareto front), the Optuna
study and its plots, then the confirm step and its verdict, and the parent run ended.
A stopped search ends here too, with the truth recorded (`interrupted`)."""

from __future__ import annotations

from datetime import datetime

import pandas as pd

from mer_tune.hpo import front
from mer_tune.hpo.confirm_step import confirm_search
from mer_tune.hpo.context import SearchContext
from mer_tune.hpo.objectives import METRIC, directions
from mer_tune.hpo.report import study_plots
from mer_tune.hpo.result import SearchResult
from mer_tune.hpo.spaces import Space, trial_config, unused
from mer_tune.outputs import write_text


def conclude(ctx: SearchContext) -> SearchResult:
    """After the last trial: results, best config, plots; the confirm step; the parent
    run ended."""
    ctx.recorder.drop_orphans(set(ctx.rows))
    result = finish(ctx, "RUNNING")
    finished = not result.results.empty and (result.results["status"] == "FINISHED").any()
    if ctx.record.holdout_size and ctx.record.confirm_top and finished:
        try:
            result = confirm_search(ctx.path, recorder=ctx.recorder, result=result)
        except BaseException:
            ctx.recorder.finish_parent("FAILED")  # never left RUNNING; `mer-tune confirm` retries
            raise
    elif not ctx.record.holdout_size:
        result.notes.append(
            "no outer holdout (--holdout 0): the best weighted F1 is the maximum of "
            f"{len(result.results)} noisy scores on the data that chose it, so it is optimistic"
        )
    ctx.recorder.finish_parent("FINISHED")
    # What --resume reads to refuse a search with nothing left to do.
    ctx.update(finished=datetime.now().isoformat("T", "seconds"))
    return result


def interrupted(ctx: SearchContext) -> None:
    """Record the truth of a stopped search: unfinished trials and their child runs, and
    the parent run, are KILLED (a resume reopens them)."""
    for trial_id, row in ctx.rows.items():
        if row.get("status") in (None, "RUNNING"):
            row["status"] = "KILLED"
            ctx.recorder.finish_child(trial_id, "KILLED", {"mer_tune.status": "KILLED"})
    # A signal (SIGTERM arrives anywhere in the driver) may have cut a trial's start short
    # after its run was created: no run of the search is left RUNNING.
    ctx.recorder.kill_running_children()
    finish(ctx, "KILLED")


def finish(ctx: SearchContext, status: str) -> SearchResult:
    """results.csv, the best config by inner score, the Optuna study and its plots. The
    parent run is ended with `status` unless that is RUNNING (the confirm step follows)."""
    recorder, folder, goals = ctx.recorder, ctx.folder, ctx.goals
    table = ctx.save_rows()
    best_cfg, best_score = None, None
    finished = table[table["status"] == "FINISHED"] if not table.empty else table
    notes: list[str] = []
    if len(goals) > 1 and not finished.empty:
        # A trade-off has no single best: the front, and the point --pick asks for.
        best_cfg, notes = front.write(
            ctx.path, table, goals, ctx.record.pick, ctx.space, ctx.base, recorder
        )
        best_score = float(finished[METRIC].max())
    elif not finished.empty:
        best = finished.loc[finished["weighted_f1"].idxmax()]
        best_score = float(best["weighted_f1"])
        best_cfg = trial_config(ctx.base, {k: best[k] for k in ctx.space.params})
        write_text(folder.best_file, best_cfg.to_yaml())
        recorder.log_parent_metrics({"best_weighted_f1": best_score})
        recorder.set_tags(recorder.parent_id, {"mer_tune.best_trial": int(best["trial"])})
        recorder.log_artifact(recorder.parent_id, folder.best_file)
    recorder.log_artifact(recorder.parent_id, folder.results_file)
    study = export_study(ctx.path.name, folder.study_db, ctx.space, table, goals)
    folder.plots.mkdir(exist_ok=True)
    if study_plots(study, folder.plots, goals):
        recorder.log_artifacts(recorder.parent_id, folder.plots, "plots")
    if status != "RUNNING":
        recorder.finish_parent(status)
    result = SearchResult(
        table, best_cfg, best_score, ctx.path, recorder.experiment_id, recorder.parent_id,
        recorder.uri,
    )  # fmt: skip
    result.notes = notes
    if len(goals) > 1 and ctx.record.pick and best_cfg is None and not finished.empty:
        result.pick_error = notes[-1]
    return result


def export_study(name: str, db, sp: Space, table: pd.DataFrame, goals: list[str]):
    """The search as an Optuna study in STORAGE/NAME/optuna.db (for optuna-dashboard and
    Optuna's plots); rebuilt from the results so it always matches them."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    states = {
        "FINISHED": optuna.trial.TrialState.COMPLETE,
        "PRUNED": optuna.trial.TrialState.PRUNED,
        "FAILED": optuna.trial.TrialState.FAIL,
    }
    db.unlink(missing_ok=True)
    study = optuna.create_study(
        storage=f"sqlite:///{db}", study_name=name, directions=directions(goals)
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
