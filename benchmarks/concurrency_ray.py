"""Search quality at 16 concurrent trials in real Ray searches on fake CPUs, with and
without Optuna's constant liar, against sequential TPE (the Ray counterpart of
concurrency_quality.py's simulation).

    python benchmarks/concurrency_ray.py --trials 64 --seeds 3 --concurrency 16

Ray is started with --concurrency fake CPUs, so Tune runs that many one-CPU trials at
once on this machine. Each arm is `mer-tune search --space voting --batch 1` (a Ray Tune
trial per suggestion, OptunaSearch asking while trials are pending), 5 folds, no outer
holdout, the stage cache shared by the arms of a seed, so each trial is a vote on cached
fold models. The constant liar is turned on by giving TPESampler constant_liar=True in
this process, where the searcher lives. A near-duplicate is a trial whose every weight
lies within 1% of its range of an earlier trial's (results.csv is in suggestion order).
"""

from __future__ import annotations

import argparse
import functools
import tempfile
from pathlib import Path

import numpy as np
import optuna
import record

ORIGINAL_TPE = optuna.samplers.TPESampler


def near_duplicates(table, keys: list[str], span: np.ndarray) -> int:
    points = table.sort_values("trial")[keys].to_numpy()
    return sum(
        any(np.all(np.abs(points[i] - points[j]) <= 0.01 * span) for j in range(i))
        for i in range(1, len(points))
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=64)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()

    import ray

    from mer_tune.hpo.cache import new_key
    from mer_tune.hpo.spaces import load_space
    from mer_tune.hpo.tuner import search

    work = Path(tempfile.mkdtemp(prefix="mer-tune-conc-ray-"))
    ray.init(
        num_cpus=args.concurrency,  # fake: more than the machine has
        include_dashboard=False,
        configure_logging=False,
        log_to_driver=False,
    )
    space = load_space("voting")
    keys = list(space.params)
    span = np.array([space.params[k].high - space.params[k].low for k in keys])
    arms = [("sequential", 1, False), ("c16 liar off", args.concurrency, False)]
    arms.append(("c16 liar on", args.concurrency, True))
    rows = {name: [] for name, _, _ in arms}
    for seed in range(args.seeds):
        cache = dict(cache_dir=str(work / f"cache-{seed}"), cache_key=new_key())
        for name, concurrency, liar in arms:
            optuna.samplers.TPESampler = (
                functools.partial(ORIGINAL_TPE, constant_liar=True) if liar else ORIGINAL_TPE
            )
            try:
                res = search(
                    space="voting",
                    trials=args.trials,
                    data="synthetic:tiny",
                    folds=5,
                    holdout=0,
                    confirm_top=0,
                    batch=1,
                    concurrency=concurrency,
                    seed=seed,
                    storage=str(work),
                    tracking_uri=f"sqlite:///{work / 'mlflow.db'}",
                    name=f"{name.replace(' ', '-')}-{seed}",
                    **cache,
                )
            finally:
                optuna.samplers.TPESampler = ORIGINAL_TPE
            table = res.results[res.results["status"] == "FINISHED"]
            dup = near_duplicates(table, keys, span)
            rows[name].append((dup, float(table["weighted_f1"].max()), len(table)))
            print(
                f"seed {seed}, {name}: {len(table)} trials, best {rows[name][-1][1]:.4f}, "
                f"near-duplicates {dup}",
                flush=True,
            )
    seq = np.array([r[1] for r in rows["sequential"]])
    for name, _, _ in arms:
        dups = np.mean([r[0] for r in rows[name]])
        best = np.array([r[1] for r in rows[name]])
        diff = best - seq
        se = diff.std(ddof=1) / np.sqrt(len(diff)) if len(diff) > 1 else float("nan")
        print(
            f"{name}: near-duplicates {dups:.1f} (mean of {len(best)} seeds), best after "
            f"{args.trials} {best.mean():.4f}, minus sequential {diff.mean():+.4f} +- {se:.4f}"
        )


if __name__ == "__main__":
    record.run(main)
