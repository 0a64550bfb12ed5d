"""What the searched decision stage gains, with and without a class-mix shift at test time.

    python benchmarks/decision_shift.py --trials 200 --seeds 3

Per seed: a synthetic dataset (tiny dims and difficulty, 600 labelled with MER2024's
class mix, a 4,000-sample pool) and two sets of test names drawn from the pool: one with
the labelled mix, one shifted (every class equally often). The fold models are trained
once (5 folds, today's defaults); then Optuna's TPE searches `decision.offsets.*` over
[-2, 2] as the `decision` space does, each trial scored by the inner 5-fold weighted F1
alone (the vote over cached heads). The chosen offsets and the plain vote (all zero) are
then scored on both test sets, which chose nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np
import optuna
import record
from sklearn.metrics import f1_score

from mer_tune.data import synthetic as synth
from mer_tune.data.layout import TEST, UNLABELLED
from mer_tune.method import pipeline
from mer_tune.method.config import build_config, with_overrides

SCALE = dataclasses.replace(
    synth.SCALES["tiny"], labelled=600, unlabelled=4000, test=0
)  # test names are drawn below


def _test_names(labels: np.ndarray, pool: np.ndarray, n: int, mix: np.ndarray, rng) -> np.ndarray:
    """n pool positions whose classes follow `mix` (drawn without replacement)."""
    out = []
    for c, share in enumerate(mix):
        members = pool[labels[pool] == c]
        out.append(
            rng.choice(members, size=min(len(members), int(round(n * share))), replace=False)
        )
    return np.sort(np.concatenate(out))


def one_seed(seed: int, trials: int, n_test: int) -> dict[str, tuple[float, float]]:
    """(plain vote, searched offsets) weighted F1: inner CV and the two test sets."""
    t0 = time.perf_counter()
    data = synth.in_memory(SCALE, seed)
    truth = data.hidden_labels
    # Clean clips only: a clip of no class (NO_CLASS) has no true class to score.
    pool = np.flatnonzero((data.split == UNLABELLED) & (truth >= 0))
    counts = np.bincount(truth[pool], minlength=len(data.classes))
    rng = np.random.default_rng(seed + 10)
    same = _test_names(truth, pool, n_test, counts / counts.sum(), rng)
    uniform = np.full(len(data.classes), 1 / len(data.classes))
    shifted = _test_names(truth, np.setdiff1d(pool, same), n_test, uniform, rng)
    both = np.concatenate([same, shifted])
    split = data.split.copy()
    split[both] = TEST
    data = dataclasses.replace(data, split=split)
    base = build_config({"eval": {"folds": 5, "seed": seed}, "seed": seed})
    cache = pipeline.MemoryCache()
    plain = pipeline.run(data, base, cache=cache, predict_idx=both)

    def offsets_cfg(values):
        return with_overrides(base, {f"decision.offsets.{c}": v for c, v in values.items()})

    def objective(trial):
        values = {c: trial.suggest_float(c, -2.0, 2.0) for c in data.classes}
        return pipeline.run(data, offsets_cfg(values), cache=cache).weighted_f1

    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))
    study.enqueue_trial({c: 0.0 for c in data.classes})  # the plain vote first
    study.optimize(objective, n_trials=trials)
    chosen = pipeline.run(data, offsets_cfg(study.best_params), cache=cache, predict_idx=both)

    def test_f1(res, part):  # extra_probs rows follow `both`: the same-mix names first
        rows = slice(0, len(same)) if part == "same" else slice(len(same), len(both))
        idx = both[rows]
        return f1_score(truth[idx], res.extra_probs[rows].argmax(1), average="weighted")

    row = {
        "inner": (plain.weighted_f1, chosen.weighted_f1),
        "same mix": (test_f1(plain, "same"), test_f1(chosen, "same")),
        "shifted mix": (test_f1(plain, "shifted"), test_f1(chosen, "shifted")),
    }
    offsets = ", ".join(f"{c} {v:+.2f}" for c, v in study.best_params.items())
    print(
        f"seed {seed}: "
        + "; ".join(f"{k} {a:.4f} -> {b:.4f}" for k, (a, b) in row.items())
        + f"; offsets {offsets}; {time.perf_counter() - t0:.0f}s"
    )
    return row


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--test", type=int, default=600, help="test names per set")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    gains = {"inner": [], "same mix": [], "shifted mix": []}
    for seed in range(args.seeds):
        for k, (a, b) in one_seed(seed, args.trials, args.test).items():
            gains[k].append(b - a)
    print(
        "\n| weighted F1 | gain of the searched offsets over the plain vote, "
        f"mean ± s.e. over {args.seeds} seeds |"
    )
    print("| --- | --- |")
    for k, values in gains.items():
        se = np.std(values, ddof=1) / np.sqrt(len(values)) if len(values) > 1 else 0.0
        what = "inner CV (chose the offsets: optimistic)" if k == "inner" else f"test names, {k}"
        print(f"| {what} | {np.mean(values):+.4f} ± {se:.4f} |")


if __name__ == "__main__":
    record.run(main)
