"""The confirm step: once selection is over, the top configs of a search and its baseline
are scored on the outer holdout, and a verdict says whether the winner beats the baseline.

By default this is inference only: every trial already had its fold models predict the
holdout (and the test names) while it ran, and wrote those probabilities to
`trial-outputs/<trial_id>.npz`, which nothing reads before this step. With `seeds`, each
candidate is also retrained on all non-holdout labelled data once per seed, through
`retrain`, to show the seed-to-seed spread.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import f1_score

from mer_tune.data.layout import TEST, MERData
from mer_tune.errors import MerTuneError
from mer_tune.hpo.folder import SearchFolder, read_mapping, read_table
from mer_tune.hpo.holdout import Holdout
from mer_tune.hpo.spaces import trial_config
from mer_tune.hpo.stats import (
    REPLICATES,
    Verdict,
    adjusted_gains,
    decide,
    paired_draws,
    paired_draws_folds,
    score_interval,
)
from mer_tune.method.config import Config
from mer_tune.outputs import atomic_write, write_text

CONFIRM_FILE = "confirm.csv"
VERDICT_FILE = "verdict.json"
BASELINE_TRIAL = 0  # the space's first point: the base config's (the paper's) values

# ((config, seed) pairs, data indices) -> each pair's vote probabilities on those indices.
Retrain = Callable[[list[tuple[Config, int]], np.ndarray], list[np.ndarray]]


# ---------------------------------------------------------------- written by trials


def save_trial_outputs(
    folder: Path,
    trial_id: str,
    idx: np.ndarray,
    probs: np.ndarray,
    splits: pd.DataFrame,
    fold_votes: np.ndarray | None = None,
    offsets: np.ndarray | None = None,
    holdout_rows: np.ndarray | None = None,
) -> None:
    """A trial's predictions on the holdout and test names, and which samples each of
    its folds fit on, selected epochs on, scored and pseudo-labelled. With `fold_votes`,
    also each fold model's own vote on the holdout rows of `idx` (and the decision's
    offsets), from which the verdict sees the training randomness. No pickles."""
    arrays = {
        "idx": np.asarray(idx, dtype=np.int64),
        "probs": np.asarray(probs, dtype=np.float32),
        "split_fold": splits["fold"].to_numpy(np.int64),
        "split_role": splits["role"].to_numpy(dtype="U8"),
        "split_index": splits["index"].to_numpy(np.int64),
    }
    if fold_votes is not None and offsets is not None and holdout_rows is not None:
        arrays |= {
            "fold_idx": arrays["idx"][holdout_rows],
            "fold_votes": np.asarray(fold_votes[:, holdout_rows], dtype=np.float32),
            "offsets": np.asarray(offsets, dtype=np.float32),
        }

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: np.savez would append .npz to a name
            np.savez(f, **arrays)

    atomic_write(folder / f"{trial_id}.npz", write)


OUTPUT_KEYS = ("idx", "probs", "split_fold", "split_role", "split_index")


def load_trial_outputs(folder: Path, trial_id: str) -> dict[str, np.ndarray]:
    """A trial's saved predictions, checked against what save_trial_outputs writes."""
    path = folder / f"{trial_id}.npz"
    try:
        with np.load(path, allow_pickle=False) as npz:
            out = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise MerTuneError(f"{path}: cannot read the trial's predictions ({err})") from None
    missing = [k for k in OUTPUT_KEYS if k not in out]
    if missing:
        raise MerTuneError(f"{path}: not a trial's predictions (no {missing[0]!r})")
    if out["probs"].ndim != 2 or len(out["probs"]) != len(out["idx"]):
        raise MerTuneError(f"{path}: its predictions and sample indices disagree in length")
    return out


# ---------------------------------------------------------------- the step


@dataclass
class Confirmation:
    table: pd.DataFrame  # one row per confirmed trial
    verdict: Verdict
    adopted: Config | None  # what best_config.yaml now holds
    notes: list[str]


@dataclass
class Candidate:
    trial: int
    trial_id: str
    inner: float
    config: Config
    folder: Path  # the search folder holding its trial outputs


def pick_candidates(
    results: pd.DataFrame, top: int, baseline_trial: int | None
) -> tuple[list[int], list[str]]:
    """Trial numbers of the top `top` finished trials by inner score, the baseline left
    out (it is confirmed anyway), and notes for the summary."""
    finished = results[results["status"] == "FINISHED"]
    if finished.empty:
        raise MerTuneError("no finished trial to confirm")
    others = finished[finished["trial"] != baseline_trial]
    ranked = others.sort_values(["weighted_f1", "trial"], ascending=[False, True])
    chosen = [int(t) for t in ranked["trial"].head(top)]
    notes = []
    if len(chosen) < top:
        notes.append(
            f"--confirm-top {top}: only {len(chosen)} finished trial(s) besides the baseline; "
            "confirmed those"
        )
    return chosen, notes


def confirm(
    data: MERData,
    holdout: Holdout,
    candidates: list[Candidate],
    baseline: Candidate | None,
    seeds: int,
    seed: int,
    retrain: Retrain | None = None,
    baseline_name: str = "the paper's values",
) -> Confirmation:
    """Score the candidates and the baseline on the holdout; decide the verdict."""
    if not len(holdout):
        raise MerTuneError("this search has no outer holdout (--holdout 0): nothing to confirm")
    # Entries by position: a staged search's baseline (another folder's trial 0) may
    # share its trial number with a candidate.
    everyone = candidates + ([baseline] if baseline else [])
    is_base = [False] * len(candidates) + [True] * (baseline is not None)
    test_idx = data.indices(TEST)
    truth = _truth(data, test_idx)
    fold_preds, fold_votes = [], []
    for c in everyone:
        out = load_trial_outputs(SearchFolder(c.folder).outputs, c.trial_id)
        fold_preds.append((_rows(out, holdout.idx).argmax(1), _rows(out, test_idx).argmax(1)))
        fold_votes.append(_fold_votes(out, holdout.idx))
    preds = _compared(everyone, fold_preds, holdout, seeds, retrain)
    y = holdout.labels
    rows, outer, draws, resampled = [], {}, {}, {}
    # Enough resamples that the smallest p-value survives Holm's K-fold adjustment.
    replicates = max(REPLICATES, 200 * len(candidates))
    for i, c in enumerate(everyone):
        retrained = preds[i] if seeds > 0 else None
        row = _scores(c, is_base[i], y, fold_preds[i][0], retrained, seed)
        if not is_base[i]:
            outer[c.trial] = row.get("retrained_f1", row["holdout_f1"])
            if baseline is not None:
                gain, spread, resampled[c.trial] = _gain_draws(
                    y, preds, fold_votes, i, seeds, seed, replicates
                )
                draws[c.trial] = (gain, spread)
        if truth is not None:
            known, labels = truth
            row["truth_f1"] = _f1(labels, fold_preds[i][1][known])
        rows.append(row)
    gains = adjusted_gains(draws)
    _add_gains(rows, gains)
    verdict = decide(gains, outer, baseline.trial if baseline else None, baseline_name)
    out = _decision(pd.DataFrame(rows), verdict, candidates, baseline)
    if seeds == 0 and not any(resampled.values()):
        out.notes.append(
            "the gains' intervals span the holdout samples, not training randomness (one "
            "fold model per trial): --folds k or --confirm-seeds S adds it"
        )
    return out


def _compared(
    everyone: list[Candidate],
    fold_preds: list,
    holdout: Holdout,
    seeds: int,
    retrain: Retrain | None,
) -> list[list[np.ndarray]]:
    """Each entry's holdout predictions the verdict compares: with retrained seeds the
    retrained models (the ones a user would deploy), otherwise the search's own."""
    if seeds == 0:
        return [[p[0]] for p in fold_preds]
    if retrain is None:
        raise MerTuneError("--confirm-seeds needs a way to retrain (a Ray cluster)")
    jobs = [(c.config, c.config.seed + s) for c in everyone for s in range(seeds)]
    probs = retrain(jobs, holdout.idx)
    return [[p.argmax(1) for p in probs[i * seeds : (i + 1) * seeds]] for i in range(len(everyone))]


def _add_gains(rows: list[dict], gains: dict) -> None:
    """Each candidate's gain, its p-value and interval adjusted for the K candidates."""
    for row in rows:
        if row["role"] == "candidate" and row["trial"] in gains:
            g = gains[row["trial"]]
            row |= {
                "gain_vs_baseline": g.gain, "gain_low": g.low, "gain_high": g.high,
                "p_value": g.p, "p_adjusted": g.p_adjusted,
                "adjusted_low": g.adjusted_low, "adjusted_high": g.adjusted_high,
            }  # fmt: skip


def _gain_draws(
    y: np.ndarray, preds: list, votes: list, i: int, seeds: int, seed: int, replicates: int
) -> tuple[float, np.ndarray, bool]:
    """Candidate i minus the baseline (the last entry), and whether the draws resampled
    fold models: over the retrained seeds when there are some, else over the fold
    models' votes, resampled with the holdout (training randomness at no extra
    training), where both trials' fold models fit on the same samples fold by fold."""
    a, b = votes[i], votes[-1]
    if seeds == 0 and a is not None and b is not None and a[2] == b[2] and len(a[0]) > 1:
        return *paired_draws_folds(y, a[:2], b[:2], seed, replicates), True
    return *paired_draws(y, preds[i], preds[-1], seed, replicates), False


def _scores(
    c: Candidate,
    is_base: bool,
    y: np.ndarray,
    fold_pred: np.ndarray,
    retrained: list[np.ndarray] | None,
    seed: int,
) -> dict:
    """A confirm.csv row: the fold models' holdout score and interval, and with retrained
    seeds their mean, spread and interval."""
    f1, low, high = score_interval(y, [fold_pred], seed)
    row = {
        "trial": c.trial,
        "search": c.folder.name,
        "role": "baseline" if is_base else "candidate",
        "inner_f1": c.inner,
        "holdout_f1": f1,
        "holdout_low": low,
        "holdout_high": high,
        "optimism_gap": c.inner - f1,
    }
    if retrained is not None:
        scores = [_f1(y, p) for p in retrained]
        row |= {"retrained_f1": float(np.mean(scores)), "retrained_sd": float(np.std(scores))}
        row["retrained_low"], row["retrained_high"] = score_interval(y, retrained, seed)[1:]
    return row


def _decision(
    table: pd.DataFrame, verdict, candidates: list[Candidate], baseline: Candidate | None
) -> Confirmation:
    """The table's winner and adopted columns, and the config best_config.yaml takes."""
    keeps_baseline = verdict.outcome in ("no gain", "loss")
    is_candidate = table["role"] == "candidate"
    table["winner"] = is_candidate & (table["trial"] == verdict.winner)
    table["adopted"] = (
        ~is_candidate if keeps_baseline else is_candidate & (table["trial"] == verdict.adopted)
    )
    adopted = None
    if keeps_baseline:
        adopted = baseline.config if baseline else None
    elif verdict.adopted is not None:
        adopted = next(c for c in candidates if c.trial == verdict.adopted).config
    return Confirmation(table, verdict, adopted, [])


def _f1(y: np.ndarray, pred: np.ndarray) -> float:
    return float(f1_score(y, pred, average="weighted"))


def _rows(outputs: dict[str, np.ndarray], idx: np.ndarray) -> np.ndarray:
    """The rows of a trial's saved probabilities for the data indices `idx`, in order."""
    where = {int(i): k for k, i in enumerate(outputs["idx"])}
    missing = [int(i) for i in idx if int(i) not in where]
    if missing:
        raise MerTuneError(
            f"a trial's saved predictions lack sample {missing[0]} (was the data changed?)"
        )
    return outputs["probs"][[where[int(i)] for i in idx]]


def _fold_votes(
    outputs: dict[str, np.ndarray], idx: np.ndarray
) -> tuple[np.ndarray, np.ndarray, str] | None:
    """(each fold model's vote on the data indices `idx`, in order; the decision's
    offsets; a digest of which samples each fold model fit on, selected on and scored),
    or None for outputs saved without them (or without every index)."""
    if not {"fold_votes", "offsets", "fold_idx"} <= outputs.keys():
        return None
    votes = outputs["fold_votes"]
    if votes.ndim != 3 or votes.shape[1] != len(outputs["fold_idx"]):
        return None
    where = {int(i): k for k, i in enumerate(outputs["fold_idx"])}
    if any(int(i) not in where for i in idx):
        return None
    return votes[:, [where[int(i)] for i in idx]], outputs["offsets"], _training_key(outputs)


def _training_key(outputs: dict[str, np.ndarray]) -> str:
    """Which samples each fold model fit on, selected epochs on and scored (not what it
    pseudo-labelled, which the config decides): equal for two trials whose fold k
    trained on the same samples, so that their fold models pair."""
    keep = outputs["split_role"] != "pseudo"
    table = np.stack([outputs["split_fold"][keep], outputs["split_index"][keep]])
    roles = outputs["split_role"][keep]
    order = np.lexsort((table[1], roles, table[0]))
    digest = hashlib.sha256(table[:, order].tobytes())
    digest.update("\n".join(roles[order].tolist()).encode())
    return digest.hexdigest()


def _truth(data: MERData, test_idx: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(positions into test_idx whose true label the synthetic generator knows, labels)."""
    if data.hidden_labels is None or not len(test_idx):
        return None
    labels = data.hidden_labels[test_idx]
    known = labels >= 0
    return (np.flatnonzero(known), labels[known]) if known.any() else None


def candidate_from(row: dict, base: Config, params: list[str], folder: Path) -> Candidate:
    return Candidate(
        int(row["trial"]),
        str(row["trial_id"]),
        float(row["weighted_f1"]),
        trial_config(base, {k: row[k] for k in params}),
        folder,
    )


def write(path: Path, result: Confirmation, seeds: int, seconds: float) -> None:
    """confirm.csv, verdict.json and the adopted best_config.yaml in the search folder."""
    write_text(path / CONFIRM_FILE, result.table.to_csv(index=False))
    info = result.verdict.to_dict() | {
        "confirm_seeds": seeds,
        "notes": result.notes,
        "seconds": round(seconds, 2),
    }
    write_text(path / VERDICT_FILE, json.dumps(info, indent=2, default=float) + "\n")
    if result.adopted is not None:
        write_text(SearchFolder(path).best_file, result.adopted.to_yaml())


def read(path: Path) -> tuple[pd.DataFrame, dict] | None:
    """A finished confirm step of the search at `path`, if it ran."""
    if not (path / CONFIRM_FILE).exists() or not (path / VERDICT_FILE).exists():
        return None
    return read_table(path / CONFIRM_FILE), read_mapping(path / VERDICT_FILE)
