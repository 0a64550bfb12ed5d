"""What gain does a known-answer scenario make available? A grid scored on the truth.

    python benchmarks/scenario_grid.py --data small --space decision --seeds 0 1 2 3
    python benchmarks/scenario_grid.py --data small+misleading-audio --space voting --seeds 0 1 2 3

For each seed it draws the data, withholds a stratified 20% outer holdout (as a search
does), trains the paper's method once (one fold model, the search default, predicting
the test names) and scores every point of a grid on the scored test names' truth. Both
spaces act after the stage cache, so the grid costs votes alone.

- voting: each of audio, visual, text and fusion weight in 0, 0.35, 0.7, 1.0 (fusion at
  least 0.05, as in the `voting` space);
- decision: offsets t x log(class share x classes) for t from -1 to 2 by 0.25, clipped
  to the `decision` space's [-2, 2] (t = 0: the plain vote, the paper's; t > 0 favours
  the frequent classes).

Printed: the paper's values' truth F1; the grid point best on the mean over the first
half of the seeds and its gain on the other half, which chose nothing; and per seed the
best point's gain (an upper bound: chosen on that seed's truth).
"""

from __future__ import annotations

import argparse
import itertools
import time

import numpy as np
import record
from sklearn.metrics import f1_score

from mer_tune.data import synthetic as synth
from mer_tune.data.layout import TEST, MERData
from mer_tune.hpo import holdout
from mer_tune.method import pipeline
from mer_tune.method.config import build_config, parse_set_options, with_overrides

LEVELS = (0.0, 0.35, 0.7, 1.0)
PAPER_WEIGHTS = (0.7, 0.4, 0.3, 0.7)  # audio, visual, text, fusion
WEIGHTS = [f"voting.weights.{m}" for m in ("audio", "visual", "text", "fusion")]


def voting_grid(data: MERData) -> list[dict]:
    """The paper's weights first, then the grid."""
    points = [PAPER_WEIGHTS, *itertools.product(LEVELS, LEVELS, LEVELS, (0.05, *LEVELS[1:]))]
    return [dict(zip(WEIGHTS, p, strict=True)) for p in points]


def decision_grid(data: MERData) -> list[dict]:
    """The plain vote first (t = 0, the paper's), then the prior-shaped offsets."""
    counts = data.class_counts()
    share = np.asarray([counts[c] for c in data.classes], dtype=float)
    prior = np.log(share / share.sum() * len(share))
    return [
        {
            f"decision.offsets.{c}": float(np.clip(t * p, -2, 2))
            for c, p in zip(data.classes, prior, strict=True)
        }
        for t in (0.0, *np.arange(-1.0, 2.01, 0.25))
    ]


GRIDS = {"voting": voting_grid, "decision": decision_grid}


def _short(point: dict) -> str:
    return ", ".join(f"{k.rpartition('.')[2]} {v:.2f}" for k, v in point.items())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default="small+misleading-audio")
    parser.add_argument("--space", choices=list(GRIDS), default="voting")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3])
    parser.add_argument("--set", dest="sets", action="append", default=[])
    args = parser.parse_args()
    base = with_overrides(build_config({"eval": {"folds": 1}}), parse_set_options(args.sets))
    grid: list[dict] = []
    table = np.zeros((0, 0))
    for s, seed in enumerate(args.seeds):
        t0 = time.perf_counter()
        data = synth.in_memory(args.data, seed)
        hold = holdout.choose(data, 0.2, seed, base.eval.folds, base.eval.select_on)
        trial_data = holdout.withhold(data, hold)
        test = data.indices(TEST)
        truth = data.hidden_labels[test]
        known = truth >= 0
        cfg = with_overrides(base, {"seed": seed})
        folds, _ = pipeline.train_folds(trial_data, cfg, predict_idx=test)
        if not grid:
            grid = GRIDS[args.space](trial_data)
            table = np.zeros((len(args.seeds), len(grid)))
        for g, point in enumerate(grid):
            res = pipeline.score(trial_data, with_overrides(cfg, point), folds)
            pred = res.extra_probs.argmax(axis=1)
            table[s, g] = f1_score(truth[known], pred[known], average="weighted")
        best = int(table[s, 1:].argmax()) + 1
        print(
            f"seed {seed}: paper {table[s, 0]:.4f}, best ({_short(grid[best])}) "
            f"{table[s, best]:.4f} ({table[s, best] - table[s, 0]:+.4f}) "
            f"{time.perf_counter() - t0:.0f}s",
            flush=True,
        )
    half = max(1, len(args.seeds) // 2)
    chosen = int(table[:half, 1:].mean(axis=0).argmax()) + 1
    gains = table[:, chosen] - table[:, 0]
    later = gains[half:]
    paper = table[:, 0]
    print(
        f"\n{args.data}, {args.space} space, seeds {args.seeds}: the paper's values' truth "
        f"F1 {paper.mean():.4f} ± {paper.std(ddof=1) / np.sqrt(len(paper)):.4f}"
    )
    print(
        f"best on the mean of seeds {args.seeds[:half]}: ({_short(grid[chosen])}), "
        f"gain there {gains[:half].mean():+.4f}"
    )
    if len(later):
        se = later.std(ddof=1) / np.sqrt(len(later)) if len(later) > 1 else float("nan")
        print(
            f"the same point on seeds {args.seeds[half:]} (chose nothing): gain "
            f"{later.mean():+.4f} ± {se:.4f}"
        )
    upper = table[:, 1:].max(axis=1) - table[:, 0]
    print(
        f"per seed, the best point's gain (chosen on that seed's truth): {upper.mean():+.4f} "
        f"(min {upper.min():+.4f})"
    )


if __name__ == "__main__":
    record.run(main)
