"""Ablation in the shape of the paper's table, on the built-in synthetic data.

    python benchmarks/ablation.py --data synthetic:small --folds 3

Prints a markdown table of weighted F1 (mean over folds) per variant.
"""

from __future__ import annotations

import argparse
import time

from mer_tune import pipeline
from mer_tune.config import build_config, with_overrides
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
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    base = build_config({"eval": {"folds": args.folds}, "seed": args.seed})
    data = resolve(args.data, DataOptions())
    print(
        f"| variant | weighted F1 (mean of {args.folds} folds) | per fold | pseudo-labels | seconds |"
    )
    print("| --- | --- | --- | --- | --- |")
    for name, overrides in VARIANTS.items():
        cfg = with_overrides(base, overrides)
        t0 = time.perf_counter()
        res = pipeline.run(data, cfg)
        folds = ", ".join(f"{v:.4f}" for v in res.fold_f1)
        print(
            f"| {name} | {res.weighted_f1:.4f} | {folds} | {sum(res.pseudo_added.values())} "
            f"| {time.perf_counter() - t0:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
