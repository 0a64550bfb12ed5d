"""A warm-started search against a cold one: trials until each reaches the first one's best.

    python benchmarks/warm_start.py --data synthetic:tiny --trials 16 --seed 0

Runs a first search (`--trials` trials of `--space`), then, with the same seed and
holdout, a search warm-started from it (`--from-search`) and a cold one; with
--other-seed, also a cold search with the next seed (a cold search with the same seed
and one trial at a time repeats the first search exactly, so it is no independent
comparison). For each: its best inner score and the first trial whose score reaches the
first search's best. Every search runs at concurrency 1, so the runs are deterministic.
--set overrides the base config (e.g. fewer epochs to make the trials cheaper).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import record

from mer_tune.hpo.tuner import search
from mer_tune.method.config import build_config, parse_set_options, with_overrides


def _reached(results, target: float) -> str:
    done = results[results["status"] == "FINISHED"].sort_values("trial")
    hit = done[done["weighted_f1"] >= target - 1e-12]
    return str(int(hit["trial"].iloc[0]) + 1) if len(hit) else "not reached"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default="synthetic:tiny")
    parser.add_argument("--space", default="thresholds")
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--other-seed", action="store_true")
    parser.add_argument("--set", dest="sets", action="append", default=[])
    args = parser.parse_args()
    base = with_overrides(build_config(), parse_set_options(args.sets))
    work = Path(tempfile.mkdtemp(prefix="warm-start-"))
    common = dict(
        space=args.space,
        trials=args.trials,
        data=args.data,
        config=base,
        concurrency=1,
        storage=str(work / "runs"),
        tracking_uri=f"sqlite:///{work / 'mlflow.db'}",
    )
    arms = [("first search", dict(name="first", seed=args.seed))]
    arms.append(
        ("warm-started from it", dict(name="warm", seed=args.seed, from_searches=["first"]))
    )
    arms.append(("cold, same seed", dict(name="cold", seed=args.seed)))
    if args.other_seed:
        arms.append(
            ("cold, next seed", dict(name="cold2", seed=args.seed + 1, holdout_seed=args.seed))
        )
    rows, target = [], None
    for label, kw in arms:
        t0 = time.perf_counter()
        res = search(**common, **kw)
        seconds = time.perf_counter() - t0
        best = float(res.results["weighted_f1"].max())
        target = best if target is None else target
        rows.append((label, best, _reached(res.results, target), seconds, res.notes[:1]))
        print(f"{label}: best {best:.4f}, {seconds:.0f}s {res.notes[:1]}")
    print(f"\ntarget: the first search's best inner weighted F1, {target:.4f}\n")
    print("| search | best inner weighted F1 | trials until it reaches the target | seconds |")
    print("| --- | --- | --- | --- |")
    for label, best, reached, seconds, _ in rows:
        print(f"| {label} | {best:.4f} | {reached} | {seconds:.0f} |")


if __name__ == "__main__":
    record.run(main)
