"""What the stage cache saves, measured side by side in one run (same trials, same seed).

    python benchmarks/cache_speedup.py thresholds --trials 16 --data synthetic:small
    python benchmarks/cache_speedup.py voting --trials 200 --uncached-trials 4 --data synthetic:small
    python benchmarks/cache_speedup.py staged --trials 24 --data synthetic:tiny

thresholds: the thresholds space with --no-cache and with the cache.
voting: the voting space with the cache for all trials; without it, the first
  --uncached-trials only (each reruns the whole pipeline), extrapolated per trial.
staged: the full space, flat vs. staged strategy on the same trial budget.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")


def _run(fn, **kw):
    t0 = time.perf_counter()
    res = fn(**kw)
    return res, time.perf_counter() - t0


def _same_scores(a, b) -> str:
    """Trials with identical parameters in both runs must score identically."""
    params = [c for c in a.columns if "." in c]
    merged = a.merge(b, on=params, suffixes=("_a", "_b"))
    same = (merged["weighted_f1_a"] - merged["weighted_f1_b"]).abs().max() < 1e-12
    return f"{same} ({len(merged)} trials with the same parameters in both)"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("what", choices=["thresholds", "voting", "staged"])
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--uncached-trials", type=int, default=4)
    parser.add_argument("--data", default="synthetic:small")
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import ray

    from mer_tune.staged import staged_search
    from mer_tune.tuning import search

    work = Path(tempfile.mkdtemp(prefix="mer-tune-cache-bench-"))
    ray.init(
        num_cpus=args.concurrency,
        include_dashboard=False,
        configure_logging=False,
        log_to_driver=False,
    )
    common = dict(
        data=args.data,
        concurrency=args.concurrency,
        seed=args.seed,
        storage=str(work),
        tracking_uri=f"sqlite:///{work / 'mlflow.db'}",
    )
    if args.what == "thresholds":
        off, t_off = _run(
            search, space="thresholds", trials=args.trials, cache=False, name="nocache", **common
        )
        on, t_on = _run(
            search, space="thresholds", trials=args.trials, cache=True, name="cache", **common
        )
        same = _same_scores(off.results, on.results)
        print(
            f"thresholds, {args.trials} trials, {args.data}: no cache {t_off:.0f} s, cache {t_on:.0f} s, "
            f"ratio {t_off / t_on:.2f}; best F1 {off.best_score:.4f} / {on.best_score:.4f}; "
            f"identical scores per trial: {same}"
        )
    elif args.what == "voting":
        on, t_on = _run(
            search, space="voting", trials=args.trials, cache=True, name="cache", **common
        )
        off, t_off = _run(
            search,
            space="voting",
            trials=args.uncached_trials,
            cache=False,
            name="nocache",
            **common,
        )
        per_off, per_on = t_off / args.uncached_trials, t_on / args.trials
        n = args.uncached_trials
        same = _same_scores(off.results, on.results)
        print(
            f"voting, {args.data}: cache {args.trials} trials in {t_on:.0f} s ({per_on:.2f} s/trial); no cache "
            f"{n} trials in {t_off:.0f} s ({per_off:.1f} s/trial); per-trial ratio {per_off / per_on:.0f}x; "
            f"identical scores for the shared first {n} trials: {same}"
        )
    else:
        flat, t_flat = _run(search, space="full", trials=args.trials, name="flat", **common)
        staged, t_staged = _run(
            staged_search, space="full", trials=args.trials, name="staged", **common
        )
        print(
            f"full space, {args.trials} trials, {args.data}: flat best {flat.best_score:.4f} in {t_flat:.0f} s; "
            f"staged best {staged.best_score:.4f} in {t_staged:.0f} s"
        )


if __name__ == "__main__":
    main()
