"""The driver-side Tune callback that turns trial events into MLflow child runs (through
tracking.SearchRecorder, the one MLflow writer) and rows of results.csv.

Tune saves its callbacks with the experiment (tuner.pkl) and a restored run uses the saved
ones. A logger is therefore saved as a reference to its search (the parent run id): on
restore it becomes the logger the resuming session registered, with its live MLflow
client and the rows it read back, not a stale copy.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from ray.tune import Callback

from mer_tune.hpo.context import SearchContext, finished_fields
from mer_tune.hpo.objectives import METRIC
from mer_tune.hpo.spaces import trial_config
from mer_tune.hpo.tracking import SearchRecorder
from mer_tune.method.config import Config

# The loggers of this process's running searches, by parent run id.
_LIVE: dict[str, TrialLogger] = {}


def trial_logger(ctx: SearchContext) -> TrialLogger:
    """The search's logger, registered so that a restored Tune run finds it."""
    logger = TrialLogger(ctx)
    _LIVE[logger.key] = logger
    return logger


def _live_logger(key: str) -> Callback:
    """What a saved logger becomes when Tune loads it: the live one of its search, or an
    inert callback where none runs (Tune reading its files outside a resume)."""
    return _LIVE.get(key) or Callback()


class TrialLogger(Callback):
    """Child runs, per-epoch metrics and the results table, written by the driver."""

    def __init__(self, ctx: SearchContext) -> None:
        self.ctx = ctx
        self.key = str(ctx.record.parent_run_id)
        # Rows read back on resume keep their trial numbers.
        self.order: dict[str, int] = {tid: int(r["trial"]) for tid, r in ctx.rows.items()}
        self.started: dict[str, float] = {}

    def __reduce__(self):
        return (_live_logger, (self.key,))

    def _save(self) -> None:
        # After every finished trial, so an interrupted search loses no result.
        self.ctx.save_rows()

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
        row = self.ctx.rows.setdefault(
            trial.trial_id, {"trial": number, "trial_id": trial.trial_id}
        )
        row.update({k: trial.config.get(k) for k in self.ctx.space.params})
        return row

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        row = self._row(trial, trials)
        self.started.setdefault(trial.trial_id, time.time())
        self.ctx.recorder.start_child(
            trial.trial_id, f"trial-{row['trial']:03d}", dict(trial.config)
        )
        row["status"] = "RUNNING"
        self.ctx.on_event("start", row=row)

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        if "fold_f1" in result:
            self.ctx.recorder.log_metrics(
                trial.trial_id, {"fold_weighted_f1": result["fold_f1"]}, step=result["fold"]
            )
            return
        if not result.get("final"):
            # The per-epoch score is logged as best_val_f1: weighted_f1 is the final score alone.
            metrics = {
                "val_f1": result.get("val_f1"),
                "train_loss": result.get("train_loss"),
                "best_val_f1": result.get(METRIC),
            }
            self.ctx.recorder.log_metrics(
                trial.trial_id, metrics, step=result.get("training_iteration")
            )

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        row, result = self._row(trial, trials), trial.last_result or {}
        row["seconds"] = round(time.time() - self.started.get(trial.trial_id, time.time()), 2)
        if result.get("final"):
            metrics, fields = finished_fields(result)
            self.ctx.recorder.log_metrics(trial.trial_id, metrics)
            row.update(status="FINISHED", **fields)
            status = "FINISHED"
        else:  # stopped early by the scheduler (ASHA, or the fold pruner)
            row.update(status="PRUNED", weighted_f1=result.get(METRIC))
            if "fold" in result:
                row["folds_run"] = int(result["fold"]) + 1
            status = "KILLED"
        tags = {
            "ray.node_ip": result.get("node_ip", ""),
            "ray.hostname": result.get("hostname", ""),
            "ray.node_id": result.get("node_id", ""),
            "mer_tune.cached_stages": result.get("cache_hits", ""),
            # Whether it read its card's one copy of the features (--share-features).
            "mer_tune.shared_features": bool(result.get("shared_features")),
            "mer_tune.status": row["status"],
        }
        _trial_artifacts(self.ctx.recorder, trial, result, self.ctx.base)
        self.ctx.recorder.finish_child(trial.trial_id, status, tags)
        self._save()
        self.ctx.on_event("complete", row=row)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        row = self._row(trial, trials)
        message = _error_message(trial)
        row.update(
            status="FAILED",
            error=message,
            seconds=round(time.time() - self.started.get(trial.trial_id, time.time()), 2),
        )
        result = trial.last_result or {}
        self.ctx.recorder.finish_child(
            trial.trial_id,
            "FAILED",
            {"error": message, "ray.node_ip": result.get("node_ip", "")},
        )
        self._save()
        self.ctx.on_event("error", row=row)


def _trial_artifacts(recorder: SearchRecorder, trial, result: dict, base: Config) -> None:
    """The resolved config as YAML and, for a finished trial, its confusion matrix."""
    from mer_tune.hpo.report import confusion_png

    run_id = recorder.children.get(trial.trial_id)
    if run_id is None:
        return
    with tempfile.TemporaryDirectory() as tmp:
        cfg = trial_config(base, dict(trial.config))
        (Path(tmp) / "config.yaml").write_text(cfg.to_yaml())
        if result.get("confusion"):
            confusion_png(
                json.loads(result["confusion"]),
                cfg.data.classes,
                Path(tmp) / "confusion_matrix.png",
            )
        recorder.log_artifacts(run_id, Path(tmp))


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
