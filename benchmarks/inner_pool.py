"""What eval.inner_pool changes: inner score, outer holdout and truth, per seed.

    python benchmarks/inner_pool.py --seeds 0 1 2 --folds 3

On the built-in synthetic data (`--scale`, default small), each seed draws the data,
withholds a stratified 20% outer holdout (as a search does; its features stay in the
pool) and runs the default method (the paper's values; `--set` overrides) once with each
eval.inner_pool: transductive (each scored inner fold joins its fold model's pool, labels
hidden, as the holdout and the test names do) and inductive (it does not). Printed per
run: the inner score (mean of the fold F1s, what a search ranks trials by), the holdout F1
and the truth F1 on the scored test names (the fold models' averaged vote; neither chose
anything), the optimism gap (inner minus holdout) and the pseudo-labels added. Then each
figure's difference, transductive minus inductive, paired by seed.
"""

from __future__ import annotations

import argparse

import numpy as np
import record
from sklearn.metrics import f1_score

from mer_tune.data import synthetic as synth
from mer_tune.data.layout import TEST
from mer_tune.hpo import holdout
from mer_tune.method import pipeline
from mer_tune.method.config import build_config, parse_set_options, with_overrides

MODES = ("transductive", "inductive")
FIGURES = ("inner", "holdout", "truth", "gap")


def _run(data, cfg, hold, test, truth) -> dict:
    trial_data = holdout.withhold(data, hold)
    res = pipeline.run(trial_data, cfg, predict_idx=np.concatenate([hold.idx, test]))
    pred = res.extra_probs.argmax(axis=1)
    out = {
        "inner": res.weighted_f1,
        "holdout": f1_score(hold.labels, pred[: len(hold)], average="weighted"),
        "truth": f1_score(truth, pred[len(hold) :], average="weighted"),
        "pseudo": sum(res.pseudo_added.values()),
    }
    return out | {"gap": out["inner"] - out["holdout"]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scale", default="small", choices=list(synth.SCALES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--set", dest="sets", action="append", default=[])
    args = parser.parse_args()
    base = with_overrides(
        build_config({"eval": {"folds": args.folds}}), parse_set_options(args.sets)
    )
    rows: dict[str, list[dict]] = {m: [] for m in MODES}
    for seed in args.seeds:
        data = synth.in_memory(args.scale, seed)
        hold = holdout.choose(data, 0.2, seed, args.folds, base.eval.select_on)
        test = data.indices(TEST)
        scored = data.hidden_labels[test] >= 0
        for mode in MODES:
            cfg = with_overrides(base, {"seed": seed, "eval.inner_pool": mode})
            row = _run(data, cfg, hold, test[scored], data.hidden_labels[test][scored])
            rows[mode].append(row)
            print(
                f"seed {seed} {mode:12s} inner {row['inner']:.4f} holdout {row['holdout']:.4f} "
                f"truth {row['truth']:.4f} gap {row['gap']:+.4f} pseudo {row['pseudo']}",
                flush=True,
            )
    print("\n| figure | transductive | inductive | transductive minus inductive, paired |")
    print("| --- | --- | --- | --- |")
    for fig in FIGURES:
        a = np.asarray([r[fig] for r in rows["transductive"]])
        b = np.asarray([r[fig] for r in rows["inductive"]])
        print(f"| {fig} | {_ms(a)} | {_ms(b)} | {_ms(a - b, sign=True)} |")


def _ms(values: np.ndarray, sign: bool = False) -> str:
    se = values.std(ddof=1) / np.sqrt(len(values)) if len(values) > 1 else float("nan")
    return f"{values.mean():{'+' if sign else ''}.4f} ± {se:.4f}"


if __name__ == "__main__":
    record.run(main)
