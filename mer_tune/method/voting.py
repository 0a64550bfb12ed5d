"""From the four heads' logits to decisions: a pool sample's confidence and the
pseudo-labels it gives, the weighted soft vote, and the decision stage after it. Pure
functions of arrays and their own config slice."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy.special import logsumexp

from mer_tune.method import train
from mer_tune.method.config import HEADS, SelfTrainingConfig


class Confidence(NamedTuple):
    """Each pool sample's predicted class and log(1 - confidence) in float64: a confidence
    of 1 - 1e-12 is told from 1 - 1e-9, where a float32 probability reads 1.0 for both."""

    pred: np.ndarray
    log_doubt: np.ndarray

    @classmethod
    def of_probs(cls, probs: np.ndarray) -> Confidence:
        top = np.minimum(probs.max(axis=1).astype(np.float64), 1.0)
        with np.errstate(divide="ignore"):
            return cls(probs.argmax(axis=1), np.log1p(-top))


def select_pseudo_labels(
    conf: Confidence | np.ndarray, thresholds: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Keep a sample when its confidence (a Confidence, or class probabilities) reaches
    the threshold of its predicted class; a threshold of 1 keeps nothing, since no
    finite logits give a probability of exactly 1. Returns (positions kept, labels)."""
    if not isinstance(conf, Confidence):
        conf = Confidence.of_probs(conf)
    thr = np.asarray(thresholds, dtype=np.float64)[conf.pred]
    with np.errstate(divide="ignore"):
        limit = np.log1p(-thr)  # p >= thr  <=>  log(1 - p) <= log(1 - thr)
    keep = (thr < 1.0) & (conf.log_doubt <= limit)
    return np.flatnonzero(keep), conf.pred[keep]


def _log_doubt(z: np.ndarray, cls: np.ndarray) -> np.ndarray:
    """log(1 - softmax(z)[cls]) per row, from the logits: log-sum-exp of the other
    classes' logits minus that of all, never 1 minus a rounded probability."""
    others = z.copy()
    others[np.arange(len(z)), cls] = -np.inf
    return logsumexp(others, axis=1) - logsumexp(z, axis=1)


def doubt(logits: dict[str, np.ndarray], st_cfg: SelfTrainingConfig) -> Confidence:
    """The pool's confidence under self_training.confidence, in log space (see
    `confidence` for the rules): what the thresholds are compared with."""
    z = {h: logits[h].astype(np.float64) for h in HEADS}
    if st_cfg.confidence == "weighted_logits":
        w = st_cfg.confidence_weights
        total = sum(w.get(h, 0.0) * z[h] for h in HEADS)
        pred = total.argmax(axis=1)
        return Confidence(pred, _log_doubt(total, pred))
    w = {h: 1.0 for h in HEADS} if st_cfg.confidence == "equal_probs" else st_cfg.confidence_weights
    pred = confidence(logits, st_cfg).argmax(axis=1)
    # 1 - the weighted mean of the heads' probabilities of `pred` = the weighted mean of
    # each head's doubt.
    total = sum(w.get(h, 0.0) for h in HEADS)
    parts = [np.log(w[h] / total) + _log_doubt(z[h], pred) for h in HEADS if w.get(h, 0.0) > 0]
    return Confidence(pred, logsumexp(np.stack(parts), axis=0))


def confidence(logits: dict[str, np.ndarray], st_cfg: SelfTrainingConfig) -> np.ndarray:
    """Class probabilities (N, C) whose top value is a pool sample's confidence.
    equal_probs: the mean of the heads' probabilities; weighted_probs: their weighted
    mean; weighted_logits: the softmax of the weighted sum of the heads' logits, not
    divided by the weights' total, as the released model outputs (much sharper: four
    heads at 0.95 give 0.95 under equal_probs and about 0.9997 here)."""
    if st_cfg.confidence == "equal_probs":
        return vote(logits, {h: 1.0 for h in HEADS})
    weights = st_cfg.confidence_weights
    if st_cfg.confidence == "weighted_probs":
        return vote(logits, weights)
    return train._softmax(sum(weights.get(h, 0.0) * logits[h] for h in HEADS))


def vote(
    logits: dict[str, np.ndarray], weights: dict[str, float], mode: str = "probs"
) -> np.ndarray:
    """Weighted soft voting of the heads; returns class probabilities (N, C).
    probs: sum of weighted per-head probabilities (the paper); logits: softmax of the
    weighted sum of logits (the released code)."""
    total = sum(weights.get(h, 0.0) for h in HEADS)
    if mode == "logits":
        return train._softmax(sum(weights.get(h, 0.0) * logits[h] for h in HEADS) / total)
    return sum(weights.get(h, 0.0) * train._softmax(logits[h]) for h in HEADS) / total


def decide(probs: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """The decision stage after the vote: per-class additive offsets on the log of the
    vote's probabilities, renormalised (all zero: the vote itself, untouched). It reads
    no trained weights, so a search of it reuses every cached stage."""
    if not np.any(offsets):
        return probs
    return train._softmax(np.log(np.clip(probs, 1e-12, None)) + offsets)
