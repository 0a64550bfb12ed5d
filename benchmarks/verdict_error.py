"""How often does the verdict adopt a config that is no better? Error rates over searches.

    python benchmarks/verdict_error.py --scenario null --searches 20 --set pretrain.epochs=3 --set finetune.epochs=5
    python benchmarks/verdict_error.py --scenario gain --searches 20 --trials 16
    python benchmarks/verdict_error.py --scenario gain --searches 20 --trials 16 --holdout 0.4

Runs real searches (local Ray, Optuna, sqlite MLflow, stage cache on), each with its own
seed (its own holdout split, sampler and training seeds), and reads each one's verdict.

- `null`: the space is the training seed alone (`seed`, an integer). No config in it is
  better than another but by chance, so every adoption is a false one.
- `gain`: a space whose best configs beat the baseline in truth (by default the voting
  weights on `synthetic:small+misleading-audio`, where the paper's weights trust a misleading modality).

Per search it prints the verdict of the default rule (Holm-adjusted over the K
candidates, interval over the holdout samples and the fold models) and what three
other rules would have adopted from the same trials: Holm without the fold models'
spread, unadjusted with it, and the rule before (unadjusted, holdout samples alone).
With the test names' truth it prints the truth gain of each adopted config.
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time
from pathlib import Path

import pandas as pd
import record

RULES = ("holm+folds (default)", "holm, samples only", "unadjusted+folds", "before: unadjusted")
SEED_SPACE = "description: the training seed alone (a null space)\nparams:\n  seed: {type: int, low: 1, high: 1000000}\n"


def _rule_verdicts(res) -> dict[str, int | None]:
    """What each rule adopts (a trial number, or None for the baseline) from the trials'
    saved predictions on the holdout."""
    from mer_tune.hpo import confirm, stats
    from mer_tune.hpo.folder import SearchFolder
    from mer_tune.hpo.holdout import search_data

    folder = SearchFolder(res.path)
    found = search_data(folder, folder.record(), folder.base())
    seed = folder.record().seed
    y, idx = found.holdout.labels, found.holdout.idx
    table = res.confirm
    base = int(table.loc[table["role"] == "baseline", "trial"].iloc[0])
    cands = table[table["role"] == "candidate"]
    ids = dict(zip(res.results["trial"], res.results["trial_id"], strict=True))

    def load(trial: int):
        out = confirm.load_trial_outputs(folder.outputs, ids[trial])
        return confirm._rows(out, idx).argmax(1), confirm._fold_votes(out, idx)

    base_pred, base_votes = load(base)
    folds, plain = {}, {}
    for t in cands["trial"].astype(int):
        pred, votes = load(t)
        folds[t] = stats.paired_draws_folds(y, votes[:2], base_votes[:2], seed)
        plain[t] = stats.paired_draws(y, [pred], [base_pred], seed)
    outer = dict(zip(cands["trial"].astype(int), cands["holdout_f1"], strict=True))
    out = {}
    for rule, draws, adjust in (
        (RULES[0], folds, True), (RULES[1], plain, True),
        (RULES[2], folds, False), (RULES[3], plain, False),
    ):  # fmt: skip
        gains = stats.adjusted_gains(draws)
        if not adjust:
            gains = {t: (g.gain, g.low, g.high) for t, g in gains.items()}
        v = stats.decide(gains, outer, baseline=base)
        out[rule] = v.adopted if v.outcome == "gain" else None
    return out


def _wilson(k: int, n: int) -> tuple[float, float]:
    """95% Wilson interval of a rate k / n."""
    if n == 0:
        return float("nan"), float("nan")
    z, p = 1.96, k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scenario", choices=["null", "gain"], default="null")
    parser.add_argument("--data", default=None)
    parser.add_argument("--space", default=None)
    parser.add_argument("--searches", type=int, default=20)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--folds", type=int, default=1)
    parser.add_argument(
        "--holdout", type=float, default=0.2, help="the outer holdout's share (search default)"
    )
    parser.add_argument("--set", dest="sets", action="append", default=[])
    args = parser.parse_args()
    data = args.data or (
        "synthetic:small" if args.scenario == "null" else "synthetic:small+misleading-audio"
    )

    import mer_tune
    from mer_tune.method.config import parse_set_options

    overrides = parse_set_options(args.sets)

    work = Path(tempfile.mkdtemp(prefix="mer-tune-verdict-"))
    os.chdir(work)
    space = args.space or "voting"
    if args.scenario == "null" and not args.space:
        (work / "seed.yaml").write_text(SEED_SPACE)
        space = str(work / "seed.yaml")
    print(f"scenario {args.scenario}: space {space}, data {data}, {args.trials} trials", flush=True)
    rows = []
    for seed in range(args.first_seed, args.first_seed + args.searches):
        t0 = time.perf_counter()
        res = mer_tune.search(
            space=space, trials=args.trials, data=data, seed=seed, name=f"s{seed}",
            storage=str(work / "runs"), folds=args.folds, overrides=overrides,
            holdout=args.holdout,
        )  # fmt: skip
        adopted = _rule_verdicts(res)
        table = res.confirm.set_index("trial")
        truth = table.get("truth_f1")
        base_trial = int(table.index[table["role"] == "baseline"][0])
        row = {"seed": seed, "seconds": time.perf_counter() - t0}
        for rule, t in adopted.items():
            row[rule] = t
            if truth is not None:
                row[rule + " truth gain"] = (
                    float(truth.loc[t] - truth.loc[base_trial]) if t is not None else 0.0
                )
        if truth is not None:  # the best truth gain any confirmed candidate had
            row["available"] = float(truth.drop(base_trial).max() - truth.loc[base_trial])
        rows.append(row)
        shown = ", ".join(f"{r.split(':')[0]}: {adopted[r]}" for r in RULES)
        if truth is not None:  # what the default rule's choice is worth on data that chose nothing
            shown += f"; truth gain of the default's {row[RULES[0] + ' truth gain']:+.4f}"
        print(
            f"search {seed}: {res.verdict.text[:90]} | {shown} ({row['seconds']:.0f}s)", flush=True
        )
    frame = pd.DataFrame(rows)
    n = len(frame)
    print(f"\n{args.scenario} scenario, {n} searches, {data}, space {Path(space).stem}, "
          f"{args.trials} trials, {args.folds} fold(s), holdout {args.holdout:g}, {' '.join(args.sets)}, mean {frame['seconds'].mean():.0f}s per search")  # fmt: skip
    print(
        "| rule | adoptions | rate (95% Wilson) | mean truth gain of the adopted (all searches) |"
    )
    print("| --- | --- | --- | --- |")
    for rule in RULES:
        k = int(frame[rule].notna().sum())
        low, high = _wilson(k, n)
        gain = ""
        if rule + " truth gain" in frame:
            g = frame[rule + " truth gain"]
            gain = f"{g.mean():+.4f} ± {g.std(ddof=1) / math.sqrt(n):.4f}"
        print(f"| {rule} | {k} of {n} | {k / n:.2f} ({low:.2f}-{high:.2f}) | {gain} |")
    if "available" in frame:
        print(f"best confirmed candidate's truth gain over the baseline: "
              f"{frame['available'].mean():+.4f} ± {frame['available'].std(ddof=1) / math.sqrt(n):.4f}")  # fmt: skip


if __name__ == "__main__":
    record.run(main)
