"""Batched trials: a voting or decision trial is a vote on fold models that are already
trained, milliseconds of work, so a Ray Tune trial per suggestion would spend its time
on bookkeeping. When every searched parameter lies downstream of the cached stages, one
Ray actor (`FoldModels`) holds the fold models and runs Optuna's ask / score / tell loop
itself, a batch of trials per call; the driver writes each batch's MLflow child runs and
results rows while the actor scores the next batch.

The first trial (the baseline) trains the fold models, or reads them from the stage
cache; every later one reuses them in memory. The loop inside the actor is sequential
TPE: each suggestion sees every score before it, as in a one-at-a-time search.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np

from mer_tune.errors import MerTuneError, UsageError
from mer_tune.hpo import samplers
from mer_tune.hpo.context import finished_fields
from mer_tune.hpo.objectives import directions
from mer_tune.hpo.spaces import Space, unused
from mer_tune.hpo.tracking import SearchRecorder
from mer_tune.method.stages import VOTE_STEP, step_of

DEFAULT_BATCH = 100  # trials per actor call: a batch's results are written together


def batch_size(requested: int | None, sp: Space, cache: bool, scheduler: str) -> tuple[int, str]:
    """(trials per Ray task, a note when --batch was asked for and cannot be had).
    `requested` None means: batch when the space allows it."""
    if requested is not None and requested < 1:
        raise UsageError(f"--batch {requested}: must be at least 1")
    if requested == 1:
        return 1, ""
    upstream = [k for k in sp.params if step_of(k) != VOTE_STEP]
    why = ""
    if upstream:
        why = f"{upstream[0]} is upstream of the stage cache"
    elif not cache:
        why = "--no-cache leaves no trained fold models to reuse"
    if why:
        note = f"--batch {requested}: {why}; each trial runs in its own Ray task"
        return 1, note if requested else ""
    if scheduler != "none":
        if requested:
            raise UsageError(
                f"--batch {requested} with --scheduler {scheduler}: a batched trial only "
                "votes, with no epochs or folds to stop early at; drop one of them"
            )
        note = (
            f"--scheduler {scheduler}: each trial runs in its own Ray task, unbatched; a trial "
            "of this space only votes, with nothing to stop early: drop --scheduler to batch"
        )
        return 1, note
    return requested or DEFAULT_BATCH, ""


class FoldModels:
    """A Ray actor: the fold models of the search's base config, trained once, and the
    Optuna study that suggests the voting and decision values scored on them."""

    def __init__(self, data: Any, base: dict, setup: dict, study: dict) -> None:
        import optuna
        import torch

        from mer_tune.method import malloc
        from mer_tune.method.config import build_config

        torch.set_num_threads(max(1, int(setup["threads"])))
        malloc.tune_malloc()
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.data, self.base, self.setup = data, build_config(base), setup
        self.space: Space = study["space"]
        self.goals: list[str] = study["goals"]
        # A resumed search's sampler gets a seed of its own: the search's seed again would
        # replay the random start-up draws of the trials already done.
        seed = study["seed"]
        if study["done"]:
            seed = int(np.random.SeedSequence([seed, study["done"]]).generate_state(1)[0])
        self.study = optuna.create_study(
            directions=directions(self.goals),
            sampler=samplers.make(study.get("sampler", "tpe"), seed),
        )
        for values, scores in study["told"]:  # warm start and a resumed search's trials
            self.study.add_trial(
                optuna.trial.create_trial(
                    params=values,
                    distributions={k: self.space.params[k] for k in values},
                    values=scores,
                )
            )
        if study["first_point"] is not None:
            self.study.enqueue_trial(study["first_point"])
        from mer_tune.data.layout import HOLDOUT, TEST

        # Samples every trial's fold models predict (the confirm step's holdout and test).
        self.predict_idx = np.flatnonzero(np.isin(data.split, [HOLDOUT, TEST]))
        self.holdout_rows = data.split[self.predict_idx] == HOLDOUT
        self.folds: list | None = None  # the trained fold models' results
        self.keys: dict | None = None  # their stage keys: every trial must share them

    def run(self, first: int, count: int) -> tuple[list[dict], bool]:
        """Trials `first` .. `first + count - 1`: ask, score, tell, one after another;
        and whether the fold models are trained (False: stop, every trial would fail)."""
        out = []
        for number in range(first, first + count):
            trial = self.study.ask()
            values = self._suggest(trial)
            row = self._score(number, values)
            if row["status"] == "FINISHED":
                self.study.tell(trial, [row[g] for g in self.goals])
            else:
                import optuna

                self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
            out.append(row | {"params": values})
            if self.folds is None:
                break  # the fold models could not be trained: every later trial would fail
        return out, self.folds is not None

    def _suggest(self, trial) -> dict[str, Any]:
        from mer_tune.hpo.optuna_adapter import DefineByRun

        DefineByRun(self.space)(trial)
        return dict(trial.params)

    def _score(self, number: int, values: dict) -> dict:
        from mer_tune.hpo import confirm
        from mer_tune.hpo.spaces import trial_config
        from mer_tune.hpo.trial import final_metrics
        from mer_tune.method import pipeline
        from mer_tune.method.stages import stage_keys

        trial_id = f"batch_{number:05d}"
        started = time.perf_counter()
        cfg = trial_config(self.base, values)
        data, predict_idx = self.data, self.predict_idx
        try:
            keys = stage_keys(cfg, data.fingerprint, 0)
            if self.folds is None:
                trained = self._train(cfg, predict_idx)
                self.keys = keys
                # Later trials reuse these models in memory: they cost the vote alone, and
                # every stage that ran is a hit for them.
                ran = {"self_training": "pseudo"}
                reused = sorted({ran.get(k, k) for f in trained for k in f.seconds})
                self.folds = [
                    dataclasses.replace(f, seconds={}, cache_hits=reused) for f in trained
                ]
                res = pipeline.score(data, cfg, trained)
            elif keys != self.keys:
                raise MerTuneError("a batched trial changed a setting upstream of the vote")
            else:
                res = pipeline.score(data, cfg, self.folds)
            if res.extra_probs is not None and res.splits is not None:
                confirm.save_trial_outputs(
                    Path(self.setup["outputs"]), trial_id, predict_idx, res.extra_probs,
                    res.splits, res.fold_votes, res.offsets, self.holdout_rows,
                )  # fmt: skip
            final = final_metrics(res, cfg, data)
        except Exception as err:  # noqa: BLE001 - the trial fails, the search goes on
            text = str(err).strip().splitlines()
            message = f"{type(err).__name__}: {text[-1] if text else ''}"[:2000]
            return {"trial": number, "trial_id": trial_id, "status": "FAILED", "error": message}
        import ray

        final["node_id"] = ray.get_runtime_context().get_node_id()
        final["seconds"] = time.perf_counter() - started
        return {"trial": number, "trial_id": trial_id, "status": "FINISHED"} | final

    def _train(self, cfg, predict_idx: np.ndarray) -> list:
        import torch

        from mer_tune.hpo.cache import StageStore
        from mer_tune.hpo.trial import deadline
        from mer_tune.method import pipeline

        setup = self.setup
        key = bytes.fromhex(setup["cache_key"]) if setup["cache_key"] else None
        cache = StageStore(setup["cache_dir"], key=key, timeout=setup["timeout"])
        check = deadline(setup["timeout"])

        def report(kind: str, **f: Any) -> None:
            check(f.get("stage", kind))

        device = "cuda" if setup["use_gpu"] and torch.cuda.is_available() else "cpu"
        folds, _ = pipeline.train_folds(self.data, cfg, cache, report, device, predict_idx)
        return folds


def told_from(rows: dict, sp: Space, goals: list[str]) -> list[tuple[dict, list[float]]]:
    """(values, scores) of a search's finished trials, for the study of a resumed search."""
    told = []
    for row in rows.values():
        if row.get("status") == "FINISHED":
            told.append((sp.values_of(row), [float(row[g]) for g in goals]))
    return told


def record_batch(recorder: SearchRecorder, sp: Space, rows: dict, batch: list[dict]) -> None:
    """Rows of results.csv and one finished MLflow child run per trial of a batch."""
    for result in batch:
        values = result.pop("params")
        row = {"trial": result["trial"], "trial_id": result["trial_id"]}
        row |= {k: values.get(k) for k in sp.params}
        row["status"] = result["status"]
        row["seconds"] = round(result.get("seconds", 0.0), 4)
        tags = {"mer_tune.status": result["status"], "mer_tune.batched": True}
        if result["status"] == "FAILED":
            row["error"] = result["error"]
            tags["error"] = result["error"]
            metrics = {}
        else:
            metrics, fields = finished_fields(result)
            row |= fields
            tags |= {
                "ray.node_id": result.get("node_id", ""),
                "mer_tune.cached_stages": result.get("cache_hits", ""),
                # The confusion matrix as JSON (a Tune trial draws it as an image).
                "mer_tune.confusion": result.get("confusion", ""),
            }
        params = {k: v for k, v in values.items() if not unused(v)}
        recorder.log_finished(
            result["trial_id"], f"trial-{row['trial']:03d}", params, metrics, tags, row["status"]
        )
        rows[result["trial_id"]] = row
