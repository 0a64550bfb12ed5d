"""The fold pruner's saving: one 5-fold search with `--scheduler folds` against the same
search without it (same seed, data, holdout and space, one trial at a time).

    python benchmarks/fold_pruning.py --data synthetic:tiny --trials 16

Prints each arm's wall time, folds run, trials pruned and best trial (its values), and
whether both found the same best config. --set overrides the base config (fewer epochs
make the trials cheaper).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import record

from mer_tune.hpo.tuner import search
from mer_tune.method.config import build_config, parse_set_options, with_overrides


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default="synthetic:tiny")
    parser.add_argument("--space", default="thresholds")
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", dest="sets", action="append", default=[])
    args = parser.parse_args()
    base = with_overrides(build_config(), parse_set_options(args.sets))
    work = Path(tempfile.mkdtemp(prefix="fold-pruning-"))
    best = {}
    print("| scheduler | seconds | folds run | trials pruned | best trial | best inner F1 |")
    print("| --- | --- | --- | --- | --- | --- |")
    for scheduler in ("none", "folds"):
        t0 = time.perf_counter()
        res = search(
            space=args.space,
            trials=args.trials,
            data=args.data,
            config=base,
            folds=args.folds,
            concurrency=1,
            scheduler=scheduler,
            seed=args.seed,
            storage=str(work / "runs"),
            tracking_uri=f"sqlite:///{work / 'mlflow.db'}",
            name=f"folds-{scheduler}",
            confirm_top=0,
        )
        seconds = time.perf_counter() - t0
        table = res.results
        pruned = table["status"] == "PRUNED"
        folds_run = int((~pruned).sum()) * args.folds
        if "folds_run" in table:
            folds_run += int(table.loc[pruned, "folds_run"].sum())
        top = table[table["status"] == "FINISHED"].sort_values("weighted_f1").iloc[-1]
        params = [c for c in table.columns if "." in c]
        best[scheduler] = tuple(
            round(float(top[c]), 6) for c in params if isinstance(top[c], float)
        )
        print(
            f"| {scheduler} | {seconds:.0f} | {folds_run} of {args.trials * args.folds} | "
            f"{int(pruned.sum())} | {int(top['trial'])} | {top['weighted_f1']:.4f} |"
        )
    print(f"\nsame best config: {best['none'] == best['folds']}")


if __name__ == "__main__":
    record.run(main)
