"""Search quality at high concurrency: near-duplicate suggestions and the best score after
64 trials, TPE with and without Optuna's constant liar, against sequential TPE.

    python benchmarks/concurrency_quality.py --trials 64 --seeds 3

The objective is real and cheap: the voting space's four weights, each trial the inner
5-fold weighted F1 of the vote over fold models trained once on synthetic:tiny (what a
cached voting trial computes). Concurrency c is simulated as Ray runs it with trials of
equal length: c trials are asked before any is told, then each told trial frees a slot
for the next ask, so every suggestion is made with c - 1 trials pending. A suggestion is
a near-duplicate when every parameter lies within 1% of its range of an earlier pending
or finished trial's. The paper's weights are the first trial, as in a search.
"""

from __future__ import annotations

import argparse
import time
from collections import deque

import numpy as np
import optuna
import record

from mer_tune.data.layout import DataOptions
from mer_tune.data.resolve import resolve
from mer_tune.hpo.spaces import load_space
from mer_tune.method import pipeline
from mer_tune.method.config import build_config, with_overrides


def _near(point: np.ndarray, earlier: list[np.ndarray], span: np.ndarray) -> bool:
    return any(np.all(np.abs(point - e) <= 0.01 * span) for e in earlier)


def run_arm(objective, space, first, seed: int, trials: int, concurrency: int, liar: bool):
    """(near-duplicate suggestions, best score after `trials`)."""
    sampler = optuna.samplers.TPESampler(seed=seed, constant_liar=liar)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    study.enqueue_trial(first)
    keys = list(space.params)
    span = np.array([space.params[k].high - space.params[k].low for k in keys])
    seen: list[np.ndarray] = []
    pending: deque = deque()
    duplicates = asked = 0
    best = -np.inf
    while asked < trials or pending:
        while asked < trials and len(pending) < concurrency:
            trial = study.ask(space.params)
            point = np.array([trial.params[k] for k in keys])
            duplicates += asked > 0 and _near(point, seen, span)
            seen.append(point)
            pending.append(trial)
            asked += 1
        trial = pending.popleft()
        value = objective(trial.params)
        best = max(best, value)
        study.tell(trial, value)
    return duplicates, best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default="synthetic:tiny")
    parser.add_argument("--trials", type=int, default=64)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[16, 64])
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    data = resolve(args.data, DataOptions())
    space = load_space("voting")
    arms = [(1, False)] + [(c, liar) for c in args.concurrency for liar in (False, True)]
    rows: dict[tuple[int, bool], list[tuple[int, float]]] = {arm: [] for arm in arms}
    for seed in range(args.seeds):
        t0 = time.perf_counter()
        base = build_config({"eval": {"folds": 5, "seed": seed}, "seed": seed})
        cache = pipeline.MemoryCache()
        pipeline.run(data, base, cache=cache)  # trains the fold models once

        def objective(values, base=base, cache=cache):
            return pipeline.run(data, with_overrides(base, values), cache=cache).weighted_f1

        first = space.defaults(base)
        for c, liar in arms:
            rows[(c, liar)].append(run_arm(objective, space, first, seed, args.trials, c, liar))
            dups, best = rows[(c, liar)][-1]
            print(
                f"seed {seed}, concurrency {c}, liar {liar}: {dups} near-duplicates, best {best:.4f}"
            )
        print(f"seed {seed}: {time.perf_counter() - t0:.0f}s")
    sequential = np.array([b for _, b in rows[(1, False)]])
    print(
        f"\n| concurrency | constant liar | near-duplicate suggestions of {args.trials - 1} "
        f"(mean over {args.seeds} seeds) | best inner F1 after {args.trials} (mean) | "
        "best minus sequential TPE's, same seed (mean ± s.e.) |"
    )
    print("| --- | --- | --- | --- | --- |")
    for (c, liar), values in rows.items():
        dups = np.array([d for d, _ in values], dtype=float)
        best = np.array([b for _, b in values])
        diff = best - sequential
        se = diff.std(ddof=1) / np.sqrt(len(diff)) if len(diff) > 1 else 0.0
        print(
            f"| {c} | {'on' if liar else 'off'} | {dups.mean():.1f} | {best.mean():.4f} | "
            f"{diff.mean():+.4f} ± {se:.4f} |"
        )


if __name__ == "__main__":
    record.run(main)
