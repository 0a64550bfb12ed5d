"""What the confirm step costs: its share of a search, with and without retraining seeds.

    python benchmarks/confirm_cost.py --trials 8 32 --seeds 3

For each trial count, a thresholds search on the built-in `synthetic:small` data with the
defaults of `make run` (local Ray, 2 trials at once, stage cache on, 20% holdout, confirm
top 3 + baseline), timed whole; the default confirm step (inference-free: the trials'
saved holdout predictions) is timed inside it. Then `mer-tune confirm NAME
--confirm-seeds S` on the finished search, timed: 4 configs retrained S times each on all
non-holdout labelled data, as Ray tasks.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import record


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default="synthetic:small")
    parser.add_argument("--trials", nargs="+", type=int, default=[8, 32])
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()

    import mer_tune
    from mer_tune.hpo.confirm_step import confirm_search

    work = Path(tempfile.mkdtemp(prefix="mer-tune-confirm-"))
    os.chdir(work)
    for trials in args.trials:
        t0 = time.perf_counter()
        res = mer_tune.search(
            space="thresholds", trials=trials, data=args.data, name=f"t{trials}",
            storage=str(work / "runs"),
        )  # fmt: skip
        wall = time.perf_counter() - t0
        default = json.loads((res.path / "verdict.json").read_text())["seconds"]
        print(
            f"{trials} trials: search {wall:.0f} s, of which the default confirm step "
            f"{default:.1f} s ({100 * default / wall:.1f}%); verdict: {res.verdict.text}",
            flush=True,
        )
        t0 = time.perf_counter()
        again = confirm_search(res.path, seeds=args.seeds)
        seeded = time.perf_counter() - t0
        print(
            f"{trials} trials: confirm with --confirm-seeds {args.seeds}: {seeded:.0f} s "
            f"({100 * seeded / (wall - default + seeded):.1f}% of a search that runs it); "
            f"verdict: {again.verdict.text}",
            flush=True,
        )
        table = again.confirm[["trial", "role", "holdout_f1", "retrained_f1", "retrained_sd"]]
        print(table.to_string(index=False), flush=True)


if __name__ == "__main__":
    record.run(main)
