"""`mer-tune run` (one config, k-fold, results in a folder) and `mer-tune predict`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mer_tune.data.layout import TEST, DataOptions
from mer_tune.data.resolve import resolve
from mer_tune.errors import MerTuneError
from mer_tune.method import pipeline
from mer_tune.method.config import Config
from mer_tune.outputs import ensure_writable, no_empty_folder_left, write_json, write_text


def run_config(
    cfg: Config,
    data_spec: str | None,
    out: Path,
    opts: DataOptions | None = None,
    report: pipeline.Report | None = None,
    device: str | None = None,
) -> pipeline.RunResult:
    """Evaluate one config and write metrics.json, val_predictions.csv and config.yaml."""
    opts = opts or DataOptions(classes=tuple(cfg.data.classes))
    data = resolve(data_spec, opts)
    with no_empty_folder_left(out):
        ensure_writable(out)  # before the training: a folder we cannot write fails now
        result = pipeline.run(data, cfg, report=report, device=device)
    metrics: dict[str, Any] = result.metrics() | {
        "data": data.source,
        "data_fingerprint": data.fingerprint,
    }
    write_text(out / "config.yaml", cfg.to_yaml())
    write_text(out / "val_predictions.csv", result.predictions.to_csv(index=False))
    write_json(out / "metrics.json", metrics)
    return result


def predict_submission(
    cfg: Config,
    data_spec: str | None,
    out: Path,
    opts: DataOptions | None = None,
    tracking_uri: str | None = None,
    experiment: str = "mer-tune",
    report: pipeline.Report | None = None,
    device: str | None = None,
) -> pd.DataFrame:
    """Train `cfg` on all labelled data (k fold models, probabilities averaged) and write a
    MER2024 submission (columns name, discrete) for the test names; log it to MLflow."""
    from mer_tune.hpo.tracking import SearchRecorder, check_reachable, resolve_uri

    opts = opts or DataOptions(classes=tuple(cfg.data.classes))
    data = resolve(data_spec, opts)
    test_idx = data.indices(TEST)
    if len(test_idx) == 0:
        raise MerTuneError(
            f"{data.source}: no test names (add test-names.csv or pass --test-names)"
        )
    uri = resolve_uri(tracking_uri)
    check_reachable(uri)
    with no_empty_folder_left(out.resolve().parent):
        ensure_writable(out.resolve().parent)
        probs = pipeline.predict_names(data, cfg, test_idx, report=report, device=device)
    submission = pd.DataFrame(
        {
            "name": data.names[test_idx],
            "discrete": np.asarray(data.classes, dtype=object)[probs.argmax(1)],
        }
    )
    write_text(out, submission.to_csv(index=False))
    SearchRecorder(uri, experiment).log_prediction(
        cfg.to_yaml(),
        out,
        {"folds": cfg.eval.folds, "test_samples": len(test_idx)},
        {"mer_tune.kind": "predict", "mer_tune.data_fingerprint": data.fingerprint},
    )
    return submission
