"""`mer-tune run`: one config, k-fold, results written to a folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import pipeline
from .config import Config
from .data import DataOptions
from .datasets import resolve
from .outputs import ensure_writable, write_json, write_text


def run_config(
    cfg: Config,
    data_spec: str | None,
    out: Path,
    opts: DataOptions | None = None,
    report: pipeline.Report | None = None,
    device: str | None = None,
) -> pipeline.RunResult:
    """Evaluate one config and write metrics.json, val_predictions.csv and config.yaml."""
    ensure_writable(out)
    opts = opts or DataOptions(classes=tuple(cfg.data.classes))
    data = resolve(data_spec, opts)
    result = pipeline.run(data, cfg, report=report, device=device)
    metrics: dict[str, Any] = result.metrics() | {
        "data": data.source,
        "data_fingerprint": data.fingerprint,
    }
    write_text(out / "config.yaml", cfg.to_yaml())
    write_text(out / "val_predictions.csv", result.predictions.to_csv(index=False))
    write_json(out / "metrics.json", metrics)
    return result
