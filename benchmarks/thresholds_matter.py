"""Do the pseudo-label thresholds matter? Truth and holdout F1 for threshold settings,
under each self_training.init.

    python benchmarks/thresholds_matter.py --seeds 0 1 2
    python benchmarks/thresholds_matter.py --seeds 0 1 2 3 4 --inits pretrained --only 0 6

On the built-in synthetic data (`--scale`, default small: 1,006 labelled, 3,000 pool, 500
test names, 300 of them clean clips whose true labels the generator knows and score), each seed draws the data, withholds a
stratified 20% outer holdout (as a search does) and trains one config per setting below,
the default method otherwise, with `--folds` fold models (epochs picked on an inner slice)
whose vote is averaged over the holdout and the test names. Pretraining and finetuning
are shared by every setting and init of a seed (a stage cache in memory); each setting
retrains.

Printed per setting and init: the holdout F1 and the truth F1 on the test names (mean ±
standard error over seeds; neither chose anything), the pseudo-labels added and their
precision, and the spread of the settings' truth F1 against the seeds' noise.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import record
from sklearn.metrics import f1_score

from mer_tune.data import synthetic as synth
from mer_tune.data.layout import TEST
from mer_tune.hpo import holdout
from mer_tune.method import pipeline
from mer_tune.method.config import build_config, parse_set_options, with_overrides

CLASSES = synth.MER2024_CLASSES
PAPER = {c: 0.99 for c in CLASSES[:4]} | {"worried": 0.85, "surprise": 0.85}


def _all(value: float) -> dict:
    return {f"self_training.thresholds.{c}": value for c in CLASSES}


def _each(values: dict) -> dict:
    return {f"self_training.thresholds.{c}": v for c, v in values.items()}


SETTINGS = {
    "paper (0.99 x4, 0.85 x2)": _each(PAPER),
    "all 0.5": _all(0.5),
    "all 0.9": _all(0.9),
    "all 0.999": _all(0.999),
    "rare classes 0.6": _each(PAPER | {"worried": 0.6, "surprise": 0.6}),
    "large classes 0.85, rare 0.99": _each(
        {c: 0.85 for c in CLASSES[:4]} | {"worried": 0.99, "surprise": 0.99}
    ),
    "self-training off": {"self_training.enabled": False},
    "paper, two rounds": _each(PAPER) | {"self_training.rounds": 2},
}


def _mean_se(values: list[float]) -> tuple[float, float]:
    arr = np.asarray(values, dtype=float)
    se = arr.std(ddof=1) / np.sqrt(len(arr)) if len(arr) > 1 else float("nan")
    return float(arr.mean()), float(se)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scale", default="small", choices=list(synth.SCALES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--inits", nargs="+", default=["pretrained", "finetuned"])
    parser.add_argument("--folds", type=int, default=1)
    parser.add_argument("--set", dest="sets", action="append", default=[])
    parser.add_argument(
        "--only", nargs="+", type=int, help="the settings to run, by position (0: paper's)"
    )
    args = parser.parse_args()
    chosen = {
        name: o for i, (name, o) in enumerate(SETTINGS.items()) if not args.only or i in args.only
    }
    base = with_overrides(
        build_config({"eval": {"folds": args.folds}}), parse_set_options(args.sets)
    )
    rows: dict[tuple[str, str], list[dict]] = {}
    for seed in args.seeds:
        data = synth.in_memory(args.scale, seed)
        hold = holdout.choose(data, 0.2, seed, args.folds, base.eval.select_on)
        trial_data = holdout.withhold(data, hold)
        test = data.indices(TEST)
        truth = data.hidden_labels[test]
        known = truth >= 0  # the scored test names: clean clips of one class
        predict_idx = np.concatenate([hold.idx, test])
        cache = pipeline.MemoryCache()  # pretraining and finetuning: shared by every init
        for init in args.inits:
            for name, overrides in chosen.items():
                cfg = with_overrides(base, {"seed": seed, "self_training.init": init, **overrides})
                t0 = time.perf_counter()
                res = pipeline.run(trial_data, cfg, cache=cache, predict_idx=predict_idx)
                pred = res.extra_probs.argmax(axis=1)
                row = {
                    "holdout": f1_score(hold.labels, pred[: len(hold)], average="weighted"),
                    "truth": f1_score(truth[known], pred[len(hold) :][known], average="weighted"),
                    "pseudo": sum(res.pseudo_added.values()),
                    "precision": res.pseudo_precision,
                    "seconds": time.perf_counter() - t0,
                }
                rows.setdefault((init, name), []).append(row)
                print(
                    f"seed {seed} {init:10s} {name:32s} holdout {row['holdout']:.4f} "
                    f"truth {row['truth']:.4f} pseudo {row['pseudo']} "
                    f"(precision {row['precision'] or 0:.3f}) {row['seconds']:.0f}s",
                    flush=True,
                )
    print("\n| init | setting | holdout F1 | truth F1 (test names) | pseudo-labels (precision) |")
    print("| --- | --- | --- | --- | --- |")
    for (init, name), found in rows.items():
        h, hse = _mean_se([r["holdout"] for r in found])
        t, tse = _mean_se([r["truth"] for r in found])
        pseudo = np.mean([r["pseudo"] for r in found])
        precs = [r["precision"] for r in found if r["precision"] is not None]
        prec = f" ({np.mean(precs):.3f})" if precs else ""
        print(
            f"| {init} | {name} | {h:.4f} ± {hse:.4f} | {t:.4f} ± {tse:.4f} | {pseudo:.0f}{prec} |"
        )
    for init in args.inits:
        # Per seed, each setting's truth F1 minus the seed's mean over settings: the spread
        # across settings with the seed's own level removed, against the seed-to-seed noise.
        table = np.array(
            [[r["truth"] for r in rows[(init, name)]] for name in chosen]
        )  # settings x seeds
        across = table - table.mean(axis=0, keepdims=True)
        spread = float(np.ptp(across.mean(axis=1)))
        seed_noise = float(table.std(axis=1, ddof=1).mean()) if table.shape[1] > 1 else float("nan")
        print(
            f"{init}: range of the settings' mean truth F1 (seed level removed) {spread:.4f}; "
            f"seed-to-seed std of one setting {seed_noise:.4f}; standard error of a "
            f"setting's mean {seed_noise / np.sqrt(table.shape[1]):.4f}"
        )
        _paired(rows, init)


def _paired(rows: dict, init: str) -> None:
    """Each setting minus self-training off (what self-training adds), and each other
    setting minus the paper's (what a threshold search could change), paired by seed."""
    paper = next(iter(SETTINGS))
    for reference in ("self-training off", paper):
        against = rows.get((init, reference))
        if not against or len(against) < 2:
            continue
        for (each_init, name), found in rows.items():
            if each_init != init or name in (reference, "self-training off"):
                continue
            diffs = [a["truth"] - b["truth"] for a, b in zip(found, against, strict=True)]
            d, se = _mean_se(diffs)
            ahead = sum(x > 0 for x in diffs)
            # Two settings that keep the same pseudo-labels on every seed differ by exactly 0.
            ratio = f"{d / se:+.1f}" if se > 0 else "n/a"
            print(
                f"{init}: {name} minus {reference}, truth F1 paired by seed {d:+.4f} ± "
                f"{se:.4f} ({ratio} standard errors; ahead in {ahead} of {len(diffs)})"
            )


if __name__ == "__main__":
    record.run(main)
