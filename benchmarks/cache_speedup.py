"""What the stage cache saves, measured side by side in one run (same trials, same seed).

    python benchmarks/cache_speedup.py thresholds --trials 16 --data synthetic:small \
        --concurrency 1 --optuna-loop
    python benchmarks/cache_speedup.py voting --trials 200 --uncached-trials 4 --data synthetic:small
    python benchmarks/cache_speedup.py staged --trials 24 --data synthetic:tiny

thresholds: the thresholds space with --no-cache and with the cache; with --optuna-loop
  also a plain Optuna ask/tell loop running the same pipeline in this process (no Ray, no
  cache). At --concurrency 1 all arms run the very same trials (same sampler, same seed).
voting: the voting space with the cache for all trials, one Ray Tune trial each
  (--batch 1; benchmarks/batched_trials.py measures batched trials); without it, the first
  --uncached-trials only (each reruns the whole pipeline), extrapolated per trial.
staged: the full space, flat vs. staged strategy on the same trial budget.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import pandas as pd
import record


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


def optuna_loop(trials: int, data: str, seed: int, **_) -> pd.DataFrame:
    """What a user writes without mer-tune: Optuna's ask/tell around the same pipeline,
    every trial from scratch, in one process. Same base config, first point and sampler
    as `mer-tune search`."""
    import optuna

    from mer_tune.data.resolve import resolve
    from mer_tune.hpo.spaces import load_space
    from mer_tune.method import pipeline
    from mer_tune.method.config import build_config, with_overrides

    base = with_overrides(build_config(), {"eval.folds": 1, "seed": seed})
    space = load_space("thresholds", base)
    base = space.base_config(base)
    dataset = resolve(data)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))
    study.enqueue_trial(space.defaults(base))
    rows = []
    for _ in range(trials):
        trial = study.ask(space.params)
        score = pipeline.run(dataset, with_overrides(base, trial.params)).weighted_f1
        study.tell(trial, score)
        rows.append({**trial.params, "weighted_f1": score})
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("what", choices=["thresholds", "voting", "staged"])
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--uncached-trials", type=int, default=4)
    parser.add_argument("--data", default="synthetic:small")
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--optuna-loop", action="store_true")
    args = parser.parse_args()

    import ray

    from mer_tune.hpo.staged import staged_search
    from mer_tune.hpo.tuner import search

    work = Path(tempfile.mkdtemp(prefix="mer-tune-cache-bench-"))
    cpus = os.cpu_count() or 1
    ray.init(
        num_cpus=cpus,
        include_dashboard=False,
        configure_logging=False,
        log_to_driver=False,
    )
    common = dict(
        data=args.data,
        concurrency=args.concurrency,
        cpus_per_trial=max(1, cpus // args.concurrency),
        seed=args.seed,
        storage=str(work),
        tracking_uri=f"sqlite:///{work / 'mlflow.db'}",
    )
    if args.what == "thresholds":
        if args.optuna_loop:
            plain, t_plain = _run(optuna_loop, trials=args.trials, **common)
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
        if args.optuna_loop:
            print(
                f"plain Optuna loop {t_plain:.0f} s, best F1 {plain['weighted_f1'].max():.4f}; "
                f"mer-tune (cache) {t_on:.0f} s, best F1 {on.best_score:.4f}; ratio "
                f"{t_plain / t_on:.2f}; identical scores per trial: {_same_scores(plain, on.results)}"
            )
    elif args.what == "voting":
        on, t_on = _run(
            search,
            space="voting",
            trials=args.trials,
            cache=True,
            name="cache",
            batch=1,  # a Tune trial per suggestion; batched_trials.py measures batches
            **common,
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
    record.run(main)
