"""One Ray Tune trial: the full pipeline on the base config plus Optuna's suggestion.

It runs where Ray places it (a CPU or a GPU worker), reports per-epoch and final scores
to Tune, and leaves its holdout and test predictions in the search folder for the confirm
step. It writes nothing to MLflow: the driver does (callback.py).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import confusion_matrix

from mer_tune.data.layout import HOLDOUT, TEST, MERData
from mer_tune.hpo import confirm
from mer_tune.hpo.cache import StageStore
from mer_tune.hpo.objectives import METRIC
from mer_tune.hpo.spaces import trial_config
from mer_tune.method import malloc, pipeline, train
from mer_tune.method.config import Config, build_config


class TrialTimeout(RuntimeError):
    """A trial ran past --trial-timeout (checked at every stage and epoch)."""


def deadline(timeout: float | None) -> Callable[[str], None]:
    """A check to call at every stage and epoch: raises TrialTimeout once `timeout`
    seconds have passed since this call (never with no timeout)."""
    started = time.monotonic()

    def check(where: str) -> None:
        if timeout and time.monotonic() - started > timeout:
            raise TrialTimeout(f"trial exceeded --trial-timeout {timeout:g} s (in {where})")

    return check


@dataclass(frozen=True)
class TrialSetup:
    """What every trial of a search shares besides the data and the base config."""

    threads: int
    use_gpu: bool
    cache_dir: str | None
    timeout: float | None = None
    outputs: str | None = None  # where the fold models' holdout and test predictions go
    cache_key: str | None = None
    share_features: str | None = None  # the name of the search's card holders


def run_trial(
    config: dict[str, Any], data_ref: list, base: dict[str, Any], setup: TrialSetup
) -> None:
    """One Ray Tune trial: the full pipeline on `base` + the suggested values, on the
    data in the object store at `data_ref[0]`. With `setup.outputs`, the fold models'
    predictions on the holdout and test names go to a file there, out of sight of the
    search (no metric, no column) until the confirm step. With `setup.share_features`,
    a GPU trial reads the one copy of the features on its card (card_features.py)."""
    import ray
    import torch
    from ray import tune

    data: MERData = ray.get(data_ref[0])  # zero-copy views of the object store's arrays
    torch.set_num_threads(max(1, setup.threads))
    malloc.tune_malloc()
    cfg = trial_config(build_config(base), config)
    key = bytes.fromhex(setup.cache_key) if setup.cache_key else None
    cache = StageStore(setup.cache_dir, key=key, timeout=setup.timeout) if setup.cache_dir else None
    outputs = setup.outputs
    predict_idx = np.flatnonzero(np.isin(data.split, [HOLDOUT, TEST])) if outputs else None
    device = "cuda" if setup.use_gpu and torch.cuda.is_available() else "cpu"
    feats = None
    if setup.share_features and device == "cuda":
        feats = _card_features(data, data_ref, setup.share_features)
    res = pipeline.run(
        data,
        cfg,
        cache=cache,
        report=Reporter(setup.timeout),
        device=device,
        predict_idx=predict_idx,
        feats=feats,
    )
    if outputs and res.extra_probs is not None and res.splits is not None:
        trial_id = tune.get_context().get_trial_id()
        confirm.save_trial_outputs(
            Path(outputs), trial_id, predict_idx, res.extra_probs, res.splits,
            res.fold_votes, res.offsets, data.split[predict_idx] == HOLDOUT,
        )  # fmt: skip
    final = final_metrics(res, cfg, data)
    final["node_id"] = ray.get_runtime_context().get_node_id()  # which Ray node ran it
    final["shared_features"] = feats is not None
    tune.report(final)


class Reporter:
    """The pipeline's progress as Tune reports, and the --trial-timeout check."""

    def __init__(self, timeout: float | None) -> None:
        self.check = deadline(timeout)
        self.started = time.monotonic()
        self.worst = 0.0  # the best worst-class F1 of any epoch so far
        self.folds: list[float] = []  # the weighted F1 of each fold finished so far

    def __call__(self, kind: str, **f: Any) -> None:
        from ray import tune

        self.check(f.get("stage", kind))
        common = {
            "train_seconds": time.monotonic() - self.started,
            "pseudo_precision": float("nan"),  # known only at the end
            "final": False,
        }
        if kind == "fold":
            # Each fold's score as it finishes, for the fold pruner (--scheduler folds).
            self.folds.append(f["weighted_f1"])
            tune.report(
                {METRIC: float(np.mean(self.folds)), "min_class_f1": self.worst}
                | common
                | {"fold_f1": f["weighted_f1"], "fold": f["fold"], "folds": f["folds"]}
            )
        # Per-epoch scores let ASHA compare trials; each is the best validation F1 of
        # the stage so far, comparable across trial lengths.
        if kind == "epoch" and "val_f1" in f:
            self.worst = max(self.worst, f["val_min_class_f1"])
            # Every objective a search may optimise, so that any can be a rung metric.
            tune.report(
                {METRIC: f["best_val_f1"], "min_class_f1": self.worst}
                | common
                | {k: f[k] for k in ("val_f1", "train_loss", "stage", "fold")}
            )


def _card_features(data: MERData, data_ref: list, search: str) -> train.Features | None:
    """The features on this trial's card from its holder; None (the trial then uploads
    its own copy) when they cannot be opened, said in the trial's log."""
    import torch

    from mer_tune.hpo import card_features

    try:
        arrays = card_features.open_shared(data_ref, search)
    except Exception as err:  # noqa: BLE001 - any failure leaves the trial its own copy
        print(f"--share-features: {err}; this trial uploads its own copy", file=sys.stderr)
        return None
    return train.Features(data, torch.device("cuda"), arrays)


def final_metrics(res: pipeline.RunResult, cfg: Config, data: MERData) -> dict[str, Any]:
    """What a finished trial reports: its objectives, per-class and per-fold scores,
    pseudo-label counts, seconds per stage and its confusion matrix (as JSON)."""
    final: dict[str, Any] = {
        METRIC: res.weighted_f1,
        "final": True,
        "cache_hits": ",".join(res.cache_hits),
    }
    final |= {f"f1_{c}": v for c, v in res.per_class_f1.items()}
    final |= {f"pseudo_added_{c}": v for c, v in res.pseudo_added.items()}
    for k, counts in enumerate(res.pseudo_by_round, start=1):
        final |= {f"pseudo_round{k}_{c}": v for c, v in counts.items()}
    final |= {f"seconds_{k}": v for k, v in res.seconds.items()}
    final |= {f"fold{k}_{METRIC}": v for k, v in enumerate(res.fold_f1)}
    final["min_class_f1"] = min(res.per_class_f1.values())
    final["train_seconds"] = sum(res.seconds.values())
    if res.pseudo_precision is not None:
        final["pseudo_precision"] = res.pseudo_precision
    elif data.hidden_labels is not None:
        final["pseudo_precision"] = 1.0  # no pseudo-label added, so none wrong
    matrix = confusion_matrix(
        res.predictions["label"], res.predictions["pred"], labels=cfg.data.classes
    )
    final["confusion"] = json.dumps(matrix.tolist())
    return final
