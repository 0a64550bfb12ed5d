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
    yr, pr = y[rows], pred[rows]
    n = rows.shape[1]
    total = np.zeros(rows.shape[0])
    for c in np.union1d(np.unique(y), np.unique(pred)):
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


def paired_difference(
    y: np.ndarray,
    preds_a: list[np.ndarray],
    preds_b: list[np.ndarray],
    seed: int,
    replicates: int = REPLICATES,
) -> tuple[float, float, float]:
    """(mean of F1(a) - F1(b), 95% low, high) from a paired bootstrap: both are scored on
    the same resampled holdout samples (and the same seed index, when retrained)."""
    rng = np.random.default_rng(seed)
    rows = resample_rows(len(y), replicates, rng)
    diff = np.stack(
        [
            weighted_f1_resampled(y, a, rows) - weighted_f1_resampled(y, b, rows)
            for a, b in zip(preds_a, preds_b, strict=True)
        ]
    )
    pick = rng.integers(0, len(preds_a), size=replicates)
    return float(diff[:, 0].mean()), *interval(diff[pick, np.arange(replicates)])


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

    @property
    def text(self) -> str:
        return f"{self.finding}; {self.consequence}" if self.consequence else self.finding

    def to_dict(self) -> dict:
        fields = ("outcome", "winner", "adopted", "gain", "low", "high")
        return {k: getattr(self, k) for k in fields} | {"text": self.text}


def decide(
    gains: dict[int, tuple[float, float, float]],
    outer: dict[int, float],
    baseline: int | None,
    baseline_name: str = "the paper's values",
) -> Verdict:
    """The verdict from each candidate's (gain, low, high) against the baseline and its
    outer score. Adopted: the best outer score among candidates whose whole interval
    lies above zero; when there is none, the baseline."""
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
    above = [t for t in gains if gains[t][1] > 0]
    adopted = max(above, key=lambda t: outer[t]) if above else baseline
    # The verdict speaks of the adopted candidate when there is one, else of the best on
    # the holdout: `winner` is that trial, so its metrics and its gain go together.
    winner = adopted if above else winner
    gain, low, high = gains[winner]
    shown = winner
    ci = f"95% CI {low:+.3f} to {high:+.3f}"
    keeps = f"best_config.yaml keeps {baseline_name}"
    if low > 0:
        outcome, text = "gain", f"trial {shown} beats {baseline_name} by {gain:+.3f} ({ci})"
        keeps = ""
    elif high < 0:
        outcome = "loss"
        text = (
            f"the best candidate, trial {shown}, is worse than {baseline_name} by "
            f"{gain:+.3f} ({ci})"
        )
    else:
        outcome = "no gain"
        text = f"no detectable gain over {baseline_name}: trial {shown} gains {gain:+.3f} ({ci})"
    return Verdict(outcome, winner, adopted, gain, low, high, text, keeps)
