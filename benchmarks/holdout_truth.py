"""Does the outer holdout tell the truth? Inner best vs outer estimate vs the test names.

    python benchmarks/holdout_truth.py --spaces thresholds full --seeds 0 1 2 --trials 8

Runs real searches (local Ray, Optuna, sqlite MLflow, stage cache on) on the built-in
`synthetic:small` data with the default settings (20% outer holdout, 1 inner fold with
epochs picked on an inner slice, confirm top 3). The generator knows the true labels of
the 300 scored test names (of 500), so each trial's test predictions can be scored against the truth.

For the trial the search ranks first (its inner best) and for the trial the verdict
adopts, it prints the inner score, the outer holdout estimate and the truth F1, and the
search's wall time with the confirm step's share of it.
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
    parser.add_argument("--spaces", nargs="+", default=["thresholds", "full"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--confirm-seeds", type=int, default=0)
    args = parser.parse_args()

    import mer_tune

    work = Path(tempfile.mkdtemp(prefix="mer-tune-truth-"))
    os.chdir(work)
    print(f"searches in {work / 'runs'}, MLflow store {work / 'mlflow.db'}", flush=True)
    rows = []
    for space in args.spaces:
        for seed in args.seeds:
            t0 = time.perf_counter()
            res = mer_tune.search(
                space=space,
                trials=args.trials,
                data=args.data,
                seed=seed,
                name=f"{space}-{seed}",
                storage=str(work / "runs"),
                confirm_seeds=args.confirm_seeds,
            )
            wall = time.perf_counter() - t0
            confirm_s = json.loads((res.path / "verdict.json").read_text())["seconds"]
            table = res.confirm.set_index("trial")
            top = int(table[table["role"] == "candidate"]["inner_f1"].idxmax())
            adopted = int(res.verdict.adopted)
            rows.append(
                {
                    "space": space,
                    "seed": seed,
                    "top": top,
                    "inner": table.loc[top, "inner_f1"],
                    "outer": table.loc[top, "holdout_f1"],
                    "outer_ci": (table.loc[top, "holdout_low"], table.loc[top, "holdout_high"]),
                    "truth": table.loc[top, "truth_f1"],
                    "adopted": adopted,
                    "adopted_outer": table.loc[adopted, "holdout_f1"],
                    "adopted_truth": table.loc[adopted, "truth_f1"],
                    "verdict": res.verdict.text,
                    "wall": wall,
                    "confirm_s": confirm_s,
                }
            )
            r = rows[-1]
            print(
                f"{space:10s} seed {seed}: inner best trial {top}: inner {r['inner']:.4f}  "
                f"outer {r['outer']:.4f} [{r['outer_ci'][0]:.4f}, {r['outer_ci'][1]:.4f}]  "
                f"truth {r['truth']:.4f} | adopted trial {adopted}: outer "
                f"{r['adopted_outer']:.4f} truth {r['adopted_truth']:.4f} | search {wall:.0f} s, "
                f"confirm {confirm_s:.1f} s ({100 * confirm_s / wall:.1f}%)",
                flush=True,
            )
            print(f"    verdict: {r['verdict']}", flush=True)
    inner_err = [abs(r["inner"] - r["truth"]) for r in rows]
    outer_err = [abs(r["outer"] - r["truth"]) for r in rows]
    closer = sum(o < i for o, i in zip(outer_err, inner_err, strict=True))
    print(
        f"mean |inner - truth| {sum(inner_err) / len(rows):.4f}, "
        f"mean |outer - truth| {sum(outer_err) / len(rows):.4f}; "
        f"outer closer to the truth in {closer} of {len(rows)} searches"
    )
    bias_inner = sum(r["inner"] - r["truth"] for r in rows) / len(rows)
    bias_outer = sum(r["outer"] - r["truth"] for r in rows) / len(rows)
    print(f"mean inner - truth {bias_inner:+.4f}, mean outer - truth {bias_outer:+.4f}")


if __name__ == "__main__":
    record.run(main)
