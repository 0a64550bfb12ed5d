"""Ablation in the shape of the paper's table, on synthetic data.

    python benchmarks/ablation.py --data synthetic:small --folds 3
    python benchmarks/ablation.py --labelled 300 --unlabelled 6000 --folds 5 \
        --set oversample.target=60

--data reads a dataset as `mer-tune run` does; --labelled/--unlabelled instead generate
one in memory with the synthetic generator at the real dims and that many samples
(MER2024-SEMI has 5,030 and 115,595). --set overrides the base config of every variant.
Prints a markdown table of weighted F1 (mean over folds, with its standard error) per
variant, and the pseudo-labels added with their precision.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time

import numpy as np
from record import recording

from mer_tune import pipeline, synth
from mer_tune.config import build_config, parse_set_options, with_overrides
from mer_tune.data import DataOptions
from mer_tune.datasets import resolve

VARIANTS = {
    "full method": {},
    "no contrastive pretraining": {"pretrain.enabled": False},
    "no pseudo-labels": {"self_training.enabled": False},
    "no oversampling": {"oversample.target": 0},
    "baseline (none of the three)": {
        "pretrain.enabled": False,
        "self_training.enabled": False,
        "oversample.target": 0,
    },
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default="synthetic:small")
    parser.add_argument("--labelled", type=int)
    parser.add_argument("--unlabelled", type=int)
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", dest="sets", action="append", default=[])
    parser.add_argument("--only", action="append", help="run only these variants")
    parser.add_argument("--record", action="store_true", help="append the output to RESULTS.md")
    args = parser.parse_args()
    base = build_config({"eval": {"folds": args.folds}, "seed": args.seed})
    base = with_overrides(base, parse_set_options(args.sets))
    if args.labelled:
        scale = dataclasses.replace(
            synth.SCALES["full"],
            labelled=args.labelled,
            unlabelled=args.unlabelled,
            test=args.unlabelled // 6,
        )
        data = synth.in_memory(scale, args.seed)
    else:
        data = resolve(args.data, DataOptions())
    print(
        f"| variant | weighted F1, mean of {args.folds} folds ± s.e. | per fold "
        "| pseudo-labels (precision) | seconds |"
    )
    print("| --- | --- | --- | --- | --- |")
    for name, overrides in VARIANTS.items():
        if args.only and name not in args.only:
            continue
        cfg = with_overrides(base, overrides)
        t0 = time.perf_counter()
        res = pipeline.run(data, cfg)
        folds = ", ".join(f"{v:.4f}" for v in res.fold_f1)
        se = np.std(res.fold_f1, ddof=1) / np.sqrt(len(res.fold_f1)) if args.folds > 1 else 0
        precision = f" ({res.pseudo_precision:.3f})" if res.pseudo_precision is not None else ""
        print(
            f"| {name} | {res.weighted_f1:.4f} ± {se:.3f} | {folds} "
            f"| {sum(res.pseudo_added.values())}{precision} | {time.perf_counter() - t0:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    with recording("--record" in sys.argv[1:]):
        main()
