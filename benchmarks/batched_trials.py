"""Batched voting trials against one Ray Tune trial per suggestion, in one run.

    python benchmarks/batched_trials.py --trials 1000 --data synthetic:small

Three arms on the same data and seed, sharing one stage cache (one key), run one after
the other:
  batched   - `mer-tune search --space voting --trials N+1` with the default batch: trial
              0 trains the fold models, then N trials are scored in batches of 100.
  per-task  - the same space with --batch 1 (a Ray Tune trial per suggestion, every
              stage read from the cache), --tune-trials trials.
  uncached  - --batch 1 --no-cache, --uncached-trials trials: each reruns the pipeline.
Reported: the batched arm's seconds for the N trials after the first (from the first
batch's arrival to the last's), the whole search's wall time, and per-trial ratios.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import record


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=1000, help="Batched trials after the first.")
    parser.add_argument("--tune-trials", type=int, default=20)
    parser.add_argument("--uncached-trials", type=int, default=2)
    parser.add_argument("--data", default="synthetic:small")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import ray

    from mer_tune.hpo.cache import new_key
    from mer_tune.hpo.tuner import search

    work = Path(tempfile.mkdtemp(prefix="mer-tune-batch-bench-"))
    ray.init(include_dashboard=False, configure_logging=False, log_to_driver=False)
    common = dict(
        space="voting",
        data=args.data,
        seed=args.seed,
        storage=str(work),
        tracking_uri=f"sqlite:///{work / 'mlflow.db'}",
        cache_dir=str(work / "cache"),
        cache_key=new_key(),
        concurrency=1,
        confirm_top=3,
    )
    arrivals: list[float] = []

    def timed(kind: str, row: dict) -> None:
        if kind == "batch":
            arrivals.append(time.perf_counter())

    t0 = time.perf_counter()
    batched = search(trials=args.trials + 1, name="batched", on_event=timed, **common)
    wall = time.perf_counter() - t0
    first = arrivals[0] - t0  # trial 0: the fold models trained from nothing
    after = arrivals[-1] - arrivals[0]
    ending = t0 + wall - arrivals[-1]  # results, study export, plots, confirm step
    per_batched = after / args.trials

    t0 = time.perf_counter()
    search(trials=args.tune_trials, name="per-task", batch=1, **common)
    per_task = (time.perf_counter() - t0) / args.tune_trials

    t0 = time.perf_counter()
    uncached = search(
        trials=args.uncached_trials,
        name="uncached",
        batch=1,
        **(common | {"cache_dir": None, "cache_key": None}),
        cache=False,
    )
    per_uncached = (time.perf_counter() - t0) / args.uncached_trials

    same = batched.results.iloc[0]["weighted_f1"] == uncached.results.iloc[0]["weighted_f1"]
    print(
        f"voting, {args.data}: batched {args.trials} trials after the first in {after:.1f} s "
        f"({per_batched * 1000:.1f} ms/trial); trial 0 (trains) {first:.1f} s; ending "
        f"(results, study, plots, confirm) {ending:.1f} s; whole search {wall:.1f} s"
    )
    print(
        f"per-task (--batch 1, cached) {args.tune_trials} trials: {per_task:.2f} s/trial; "
        f"uncached (--batch 1 --no-cache) {args.uncached_trials} trials: {per_uncached:.1f} s/trial"
    )
    print(
        f"ratios per trial: batched vs uncached {per_uncached / per_batched:.0f}x, "
        f"batched vs per-task {per_task / per_batched:.0f}x; "
        f"trial 0 scores the same batched and uncached: {same}; "
        f"best inner F1 batched {batched.best_score:.4f}"
    )


if __name__ == "__main__":
    record.run(main)
