"""Orchestration overhead per trial of `mer-tune search` (issue target: under 2 s).

    python benchmarks/search_overhead.py --trials 16 --concurrency 2

Runs a real search (local Ray, Optuna, sqlite MLflow) on the tiny synthetic data, with the
stage cache off so that every trial runs the whole pipeline, and compares the search's
wall time with the time the trials spent inside the pipeline:

    overhead per trial = (wall - sum(pipeline seconds) / concurrency) / trials

Ray's start-up is timed apart (it is paid once per search, not per trial).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import record

FAST = """
model: {hidden: 16, heads: 2, head_dims: [16]}
pretrain: {epochs: 1}
finetune: {epochs: 4}
self_training: {epochs: 1}
optim: {batch_size: 64, lr: 0.003}
oversample: {target: 40}
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--concurrency", type=int, default=2)
    args = parser.parse_args()

    import ray

    import mer_tune

    work = Path(tempfile.mkdtemp(prefix="mer-tune-bench-"))
    (work / "fast.yaml").write_text(FAST)
    t0 = time.perf_counter()
    ray.init(
        num_cpus=args.concurrency,
        include_dashboard=False,
        configure_logging=False,
        log_to_driver=False,
    )
    ray_start = time.perf_counter() - t0
    mer_tune.search(
        space="thresholds",
        trials=1,
        data="synthetic:tiny",
        config=str(work / "fast.yaml"),
        storage=str(work / "runs"),
        tracking_uri=f"sqlite:///{work / 'mlflow.db'}",
        name="warm",
    )
    t0 = time.perf_counter()
    res = mer_tune.search(
        space="thresholds",
        trials=args.trials,
        data="synthetic:tiny",
        config=str(work / "fast.yaml"),
        concurrency=args.concurrency,
        cache=False,
        storage=str(work / "runs"),
        tracking_uri=f"sqlite:///{work / 'mlflow.db'}",
        name="bench",
    )
    wall = time.perf_counter() - t0
    pipeline_total = float(res.results["pipeline_seconds"].sum())
    overhead = (wall - pipeline_total / args.concurrency) / args.trials
    print(f"ray.init: {ray_start:.1f} s (once per search)")
    print(
        f"search wall time: {wall:.1f} s for {args.trials} trials at concurrency {args.concurrency}"
    )
    print(
        f"pipeline time inside trials: {pipeline_total:.1f} s (mean {pipeline_total / args.trials:.2f} s)"
    )
    print(f"orchestration overhead per trial: {overhead:.2f} s")


if __name__ == "__main__":
    record.run(main)
