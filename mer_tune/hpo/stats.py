"""Intervals for holdout scores and the verdict of a search against its baseline.

Weighted F1 (scikit-learn's `average="weighted"`) is computed for thousands of bootstrap
resamples at once from per-class counts. Everything here is a pure function of arrays.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

REPLICATES = 2000
LEVEL = 0.95


def weighted_f1_resampled(y: np.ndarray, pred: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Weighted F1 of each resample: `rows` is (B, n) positions into y and pred.
    Equal to sklearn's f1_score(y[r], pred[r], average="weighted") for every row r."""
    return _weighted_f1_rows(y[rows], pred[rows])


def _weighted_f1_rows(yr: np.ndarray, pr: np.ndarray) -> np.ndarray:
    """Weighted F1 of each row of (B, n) true labels and predictions."""
    n = yr.shape[1]
    total = np.zeros(yr.shape[0])
    for c in np.union1d(np.unique(yr), np.unique(pr)):
        true_c, pred_c = yr == c, pr == c
        tp = (true_c & pred_c).sum(1)
        support = true_c.sum(1)
        denom = support + pred_c.sum(1)  # 2tp + fp + fn
        f1 = np.divide(2 * tp, denom, out=np.zeros(len(tp)), where=denom > 0)
        total += f1 * support / n
    return total


def resample_rows(n: int, replicates: int, rng: np.random.Generator) -> np.ndarray:
    """(replicates, n) positions drawn with replacement; row 0 is the sample itself."""
    rows = rng.integers(0, n, size=(replicates, n))
    rows[0] = np.arange(n)
    return rows


def interval(values: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def score_interval(
    y: np.ndarray, preds: list[np.ndarray], seed: int, replicates: int = REPLICATES
) -> tuple[float, float, float]:
    """(weighted F1, 95% low, high) of predictions on y; with several prediction sets
    (one per training seed), the score is their mean and each resample also draws a
    seed, so the interval spans both the samples and the seeds."""
    rng = np.random.default_rng(seed)
    rows = resample_rows(len(y), replicates, rng)
    per_seed = np.stack([weighted_f1_resampled(y, p, rows) for p in preds])
    pick = rng.integers(0, len(preds), size=replicates)
    draws = per_seed[pick, np.arange(replicates)]
    return float(per_seed[:, 0].mean()), *interval(draws)


def paired_draws(
    y: np.ndarray,
    preds_a: list[np.ndarray],
    preds_b: list[np.ndarray],
    seed: int,
    replicates: int = REPLICATES,
) -> tuple[float, np.ndarray]:
    """(mean of F1(a) - F1(b), the bootstrap's draws of it): both are scored on the same
    resampled holdout samples (and the same seed index, when retrained)."""
    rng = np.random.default_rng(seed)
    rows = resample_rows(len(y), replicates, rng)
    diff = np.stack(
        [
            weighted_f1_resampled(y, a, rows) - weighted_f1_resampled(y, b, rows)
            for a, b in zip(preds_a, preds_b, strict=True)
        ]
    )
    pick = rng.integers(0, len(preds_a), size=replicates)
    return float(diff[:, 0].mean()), diff[pick, np.arange(replicates)]


def paired_draws_folds(
    y: np.ndarray,
    votes_a: tuple[np.ndarray, np.ndarray],
    votes_b: tuple[np.ndarray, np.ndarray],
    seed: int,
    replicates: int = REPLICATES,
) -> tuple[float, np.ndarray]:
    """(F1(a) - F1(b) of the fold models' averaged votes, the bootstrap's draws of it).
    `votes_*` is (each fold model's vote, (folds, n, classes); the decision's offsets).
    Each resample draws the holdout samples and, with replacement, the fold models whose
    votes it averages, the same ones for a and b (fold k of both fit on the same
    samples): the interval then spans the training randomness of the fold models too."""
    rng = np.random.default_rng(seed)
    rows = resample_rows(len(y), replicates, rng)
    folds = votes_a[0].shape[0]
    weights = rng.multinomial(folds, np.full(folds, 1 / folds), size=replicates)
    weights[0] = 1  # row 0: the sample and the fold models themselves
    diff = np.empty(replicates)
    for start in range(0, replicates, 250):  # (resamples, n, classes) a block at a time
        part = slice(start, start + 250)
        yr = y[rows[part]]
        f1 = [
            _weighted_f1_rows(yr, np.take_along_axis(_averaged(v, weights[part]), rows[part], 1))
            for v in (votes_a, votes_b)
        ]
        diff[part] = f1[0] - f1[1]
    return float(diff[0]), diff


def _averaged(votes: tuple[np.ndarray, np.ndarray], weights: np.ndarray) -> np.ndarray:
    """Predictions (B, n) of the votes averaged with each row of fold weights (B, folds),
    then the decision's offsets, as the pipeline decides."""
    fold_votes, offsets = votes
    # In float64, as the pipeline averages: draw 0 then equals the saved vote's argmax.
    mean = np.einsum("bf,fnc->bnc", weights.astype(np.float64), fold_votes) / weights.shape[1]
    if np.any(offsets):
        mean = np.log(np.clip(mean, 1e-12, None)) + offsets
    return mean.argmax(-1)


def paired_difference(
    y: np.ndarray,
    preds_a: list[np.ndarray],
    preds_b: list[np.ndarray],
    seed: int,
    replicates: int = REPLICATES,
) -> tuple[float, float, float]:
    """(mean of F1(a) - F1(b), 95% low, high) from a paired bootstrap."""
    gain, draws = paired_draws(y, preds_a, preds_b, seed, replicates)
    return gain, *interval(draws)


def p_value(draws: np.ndarray) -> float:
    """Two-sided bootstrap p-value of "no difference": twice the smaller share of draws
    on either side of zero (each count plus one, so that it is never zero). Below 0.05
    when the 95% percentile interval leaves out zero, up to the resampling's grain."""
    n = len(draws)
    below, above = (draws <= 0).sum() + 1, (draws >= 0).sum() + 1
    return float(min(1.0, 2 * min(below, above) / (n + 1)))


def holm(p: dict[int, float], alpha: float = 1 - LEVEL) -> dict[int, tuple[float, float]]:
    """Holm's step-down adjustment for K tests: trial -> (adjusted p-value, the level of
    the interval that matches it). The smallest p is tested at alpha / K, the next at
    alpha / (K - 1), and so on, each adjusted p at least the one before; an adjusted p
    below alpha rejects, and the chance of rejecting any true "no difference" stays at
    most alpha. The level, 1 - alpha x p / adjusted p, makes the interval leave out zero
    when the adjusted p is below alpha (the p-value's duality with its interval, up to
    the resampling's grain), so the two tell the same story."""
    order = sorted(p, key=lambda t: (p[t], t))
    k, running, out = len(order), 0.0, {}
    for i, t in enumerate(order):
        running = max(running, min(1.0, (k - i) * p[t]))
        out[t] = (running, 1 - alpha * p[t] / running)
    return out


@dataclass(frozen=True)
class Gain:
    """A candidate minus the baseline on the holdout: the paired bootstrap's estimate and
    95% interval, then its p-value and interval adjusted for the K candidates (Holm)."""

    gain: float
    low: float
    high: float
    p: float = float("nan")
    p_adjusted: float = float("nan")
    adjusted_low: float = float("nan")
    adjusted_high: float = float("nan")

    @property
    def adjusted(self) -> bool:
        return not np.isnan(self.p_adjusted)

    @property
    def clear_gain(self) -> bool:
        """Whether the gain is clear: adjusted p below 0.05 and the adjusted interval
        wholly above zero (the side of zero is the draws', not the point estimate's
        alone; the p-value's +1 counts make it the stricter of the two at the margin)."""
        if not self.adjusted:
            return self.low > 0
        return self.p_adjusted < 1 - LEVEL and self.adjusted_low > 0

    @property
    def clear_loss(self) -> bool:
        if not self.adjusted:
            return self.high < 0
        return self.p_adjusted < 1 - LEVEL and self.adjusted_high < 0


def adjusted_gains(draws: dict[int, tuple[float, np.ndarray]]) -> dict[int, Gain]:
    """Each candidate's Gain from (estimate, bootstrap draws), Holm-adjusted over all."""
    p = {t: p_value(d) for t, (_, d) in draws.items()}
    adjusted = holm(p)
    out = {}
    for t, (gain, d) in draws.items():
        p_adj, level = adjusted[t]
        out[t] = Gain(gain, *interval(d), p[t], p_adj, *interval(d, level))
    return out


@dataclass(frozen=True)
class Verdict:
    outcome: str  # gain | no gain | loss | no baseline
    winner: int | None  # the candidate the verdict speaks of (adopted, else best on holdout)
    adopted: int | None  # trial number written to best_config.yaml
    gain: float | None  # winner minus baseline on the holdout
    low: float | None
    high: float | None
    finding: str  # what the holdout shows
    consequence: str = ""  # what best_config.yaml holds because of it, when that is said
    # The winner's gain adjusted for the number of candidates compared with the baseline.
    candidates: int = 0
    p_adjusted: float | None = None
    adjusted_low: float | None = None
    adjusted_high: float | None = None

    @property
    def text(self) -> str:
        return f"{self.finding}; {self.consequence}" if self.consequence else self.finding

    def to_dict(self) -> dict:
        fields = (
            "outcome", "winner", "adopted", "gain", "low", "high",
            "candidates", "p_adjusted", "adjusted_low", "adjusted_high",
        )  # fmt: skip
        return {k: getattr(self, k) for k in fields} | {"text": self.text}


def decide(
    gains: dict[int, Gain | tuple[float, float, float]],
    outer: dict[int, float],
    baseline: int | None,
    baseline_name: str = "the paper's values",
) -> Verdict:
    """The verdict from each candidate's gain over the baseline and its outer score.
    Adopted: the best outer score among candidates whose gain is clear and positive
    after the adjustment for the K candidates; when there is none, the baseline."""
    if not outer:
        return Verdict("no baseline", None, None, None, None, None, "no candidate to confirm")
    winner = max(outer, key=lambda t: outer[t])
    if baseline is None or winner not in gains:
        # Nothing to compare with: best_config.yaml keeps the search's own (inner) choice.
        return Verdict(
            "no baseline",
            winner,
            None,
            None,
            None,
            None,
            f"no verdict: the baseline trial did not finish (trial {winner} scores best on "
            "the holdout)",
            "best_config.yaml keeps the search's inner best",
        )
    found = {t: g if isinstance(g, Gain) else Gain(*g) for t, g in gains.items()}
    above = [t for t, g in found.items() if g.clear_gain]
    adopted = max(above, key=lambda t: outer[t]) if above else baseline
    # The verdict speaks of the adopted candidate when there is one, else of the best on
    # the holdout: `winner` is that trial, so its metrics and its gain go together.
    winner = adopted if above else winner
    g = found[winner]
    ci = f"95% CI {g.low:+.3f} to {g.high:+.3f}"
    if g.adjusted and len(found) > 1:
        ci += (
            f"; adjusted for {len(found)} candidates: p = {g.p_adjusted:.3f}, "
            f"CI {g.adjusted_low:+.3f} to {g.adjusted_high:+.3f}"
        )
    elif g.adjusted:
        ci += f"; p = {g.p_adjusted:.3f}"
    keeps = f"best_config.yaml keeps {baseline_name}"
    if above:
        outcome, text = "gain", f"trial {winner} beats {baseline_name} by {g.gain:+.3f} ({ci})"
        keeps = ""
    elif g.clear_loss:
        outcome = "loss"
        text = (
            f"the best candidate, trial {winner}, is worse than {baseline_name} by "
            f"{g.gain:+.3f} ({ci})"
        )
    else:
        outcome = "no gain"
        text = f"no detectable gain over {baseline_name}: trial {winner} gains {g.gain:+.3f} ({ci})"
    adjusted = (g.p_adjusted, g.adjusted_low, g.adjusted_high) if g.adjusted else (None, None, None)
    return Verdict(
        outcome, winner, adopted, g.gain, g.low, g.high, text, keeps, len(found), *adjusted
    )
