"""A synthetic MER-shaped dataset in the MERTools layout.

How the data is built, so that each part of the method has something real to gain:
- a shared emotion latent z (class prototype + per-sample variation) appears in every
  modality, mixed with a larger modality-specific nuisance latent: cross-modal contrastive
  learning on unlabelled data can find z, and the labelled set alone is small for it;
- class signal is spread unevenly: each modality sees some classes clearly and others
  faintly (audio: anger; visual: happiness and surprise; text: sadness and worry), and the
  modalities carry the latent at unequal strength (audio most, text least), so fusion
  beats any single modality;
- a share of samples per modality carries no class signal at all (no face, silence, empty
  transcript), so confident pseudo-labels must come from the modalities that do;
- MER2024's labelled class proportions, so the rare classes gain from oversampling;
- annotators label hard clips too: at full scale a tenth of the labelled clips are of
  weak expression, so the classifier learns to be unsure where weak clips lie (at tiny
  and small a tenth lean partly to another class instead);
- like MER2024-SEMI's, the unlabelled pool is mostly clips of no one class (two-class
  mixtures, emotions outside the six, clips with little signal), all of weak expression;
  a small share are clean clips of the six at the labelled class mix. The test names are
  candidates in the pool: some clean clips (the scored ones, as MER2024 scored 1,169 of its
  20,000 candidates) among clips of no class.
The true labels of the unlabelled pool go to ``synthetic-truth.csv`` ("none" for a clip of
no class), used only to report pseudo-label precision and the test names' truth F1.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from filelock import FileLock

from mer_tune.data import scenarios
from mer_tune.data.layout import (
    DEFAULT_FOLDERS,
    LABELLED,
    MER2024_CLASSES,
    MODALITIES,
    NO_CLASS,
    NO_CLASS_NAME,
    TEST,
    TRUTH_FILE,
    UNLABELLED,
    MERData,
    assemble,
)
from mer_tune.data.releases import LAYOUTS
from mer_tune.errors import MerTuneError

LABELLED_COUNTS = [1248, 1208, 1038, 730, 616, 190]  # MER2024-SEMI, classes in order


@dataclass(frozen=True)
class Scale:
    labelled: int
    unlabelled: int
    test: int  # test names, drawn from inside the unlabelled pool as in MER2024-SEMI
    dims: dict[str, int]
    # Difficulty: within-class spread of the shared latent, nuisance and noise scales.
    # The tiny dims cannot carry the real-dim difficulty, so tiny data is easier.
    spread: float = 1.4
    nuisance: float = 3.0
    noise: float = 1.0
    # The pool's share of clean clips of the six (the rest are of no one class), and how
    # many of them are among the test names (the scored ones). Small scales keep more
    # clean clips, so that their few test names still score enough samples, and (small's
    # 45%) so that self-training at the demo's size has clean clips to learn from.
    in_class: float = 0.02
    scored: int = 1169
    # How much of the shared latent each modality carries (audio, visual, text): audio
    # most, text least, the order the paper's voting weights (0.7, 0.4, 0.3) imply.
    modality_gain: tuple[float, float, float] = (1.0, 0.75, 0.55)
    # The labelled class proportions (and the pool's clean clips'); None: MER2024-SEMI's.
    class_mix: tuple[float, ...] | None = None
    # The share of clips whose audio expresses another class than the clip (laughter in a
    # sad scene, music): the audio head is then confidently wrong on them.
    misleading_audio: float = 0.0
    # Hard labelled clips: the share of weak expression (labelled all the same), which
    # teach the classifier to be unsure of weak clips, as it should be of the pool's clips
    # of no class, and the share leaning only partly to their class. Full scale's values
    # keep its count of pseudo-labels and its F1 near MER2024's (RESULTS.md: "Calibration
    # of the built-in data").
    labelled_weak: float = 0.1
    labelled_ambiguous: float = 0.0


# Tiny and small keep g3's labelled set, with which self-training at small gains measurably.
G3_LABELLED = {"labelled_weak": 0.0, "labelled_ambiguous": 0.1}
SCALES = {
    "tiny": Scale(
        180,
        360,
        60,
        {"audio": 24, "visual": 16, "text": 32},
        spread=0.8,
        nuisance=1.0,
        noise=0.5,
        in_class=0.3,
        scored=40,
        **G3_LABELLED,
    ),
    "small": Scale(
        1006,
        3000,
        500,
        {"audio": 1024, "visual": 768, "text": 5120},
        spread=1.5,
        in_class=0.45,
        scored=300,
        **G3_LABELLED,
    ),
    "full": Scale(5030, 115595, 20000, {"audio": 1024, "visual": 768, "text": 5120}),
    # MER2025-SEMI Track 1: 7,369 labelled, about 124,800 other clips, 20,000 candidates.
    "mer2025": Scale(7369, 124800, 20000, {"audio": 1024, "visual": 768, "text": 5120}),
}
# The release a scale is laid out as (layout.LAYOUTS); the others are MER2024-SEMI's.
RELEASE = {"mer2025": "MER2025-SEMI"}

# Signal strength of each class (columns, in MER2024 order) in each modality. Each modality
# sees some classes clearly and others faintly, and every class carries the same total
# signal over the modalities (the sum of (Scale.modality_gain x strength)^2 is 1.42 for each):
# a class of faint signal everywhere would own the centre, where clips of weak expression
# sit, and take them with confidence.
STRENGTH = {
    "audio": [0.91, 1.12, 0.67, 0.71, 0.55, 0.61],
    "visual": [0.78, 0.45, 1.26, 0.59, 0.55, 1.33],
    "text": [0.91, 0.45, 0.5, 1.54, 1.78, 0.41],
}
UNINFORMATIVE = {"audio": 0.15, "visual": 0.2, "text": 0.25}
OTHER_EMOTIONS = 4  # emotions outside the six, each with its own prototype
OTHER_SPREAD = 0.5  # how far their prototypes lie from the centre of the six
# A clip of no class: a mixture, another emotion or little signal (shares of those clips).
NO_CLASS_KINDS = (3 / 7, 2 / 7, 2 / 7)
LOW_INFORMATION = 0.2  # the share of its class's prototype a low-information clip keeps
# Clips of no class are of weak expression: their whole latent (position and variation)
# scaled towards the centre, where the features hold little but nuisance and noise.
WEAK_EXPRESSION = 0.1
LATENT, NUISANCE = 16, 32
# The generator's version: in the built-in folders' names and the in-memory fingerprints,
# so that data (and cached stages) of an earlier generator are never read as this one's.
GENERATOR = "g4"
CHUNK = 8192


def class_counts(total: int, mix: tuple[float, ...] | None = None) -> list[int]:
    """The class proportions `mix` (default MER2024's labelled ones) scaled to `total`,
    at least 8 per class."""
    share = np.asarray(mix or LABELLED_COUNTS, dtype=float)
    share = share / share.sum()
    counts = np.maximum(8, np.floor(share * total).astype(int))
    counts[0] += total - counts.sum()
    return counts.tolist()


def _release(scale: str) -> str:
    """The release a scale (or SCALE+PRESET) is laid out as."""
    return RELEASE.get(scenarios.split(scale)[0], "MER2024-SEMI")


def scale_of(scale: str | Scale) -> Scale:
    """A Scale by name (one of SCALES, or SCALE+PRESET: scenarios.py), or a one-line
    refusal naming what is unknown."""
    if isinstance(scale, Scale):
        return scale
    base, preset = scenarios.split(scale)
    if base not in SCALES:
        raise MerTuneError(f"unknown scale '{base}'; valid: {', '.join(SCALES)}")
    return scenarios.apply(SCALES[base], scale, preset) if preset else SCALES[base]


def generate(scale: str | Scale, seed: int) -> tuple[dict[str, np.ndarray], np.ndarray, int]:
    """Features per modality (N, dim) float32, true labels (N,; NO_CLASS for a pool clip
    of no one class), and how many are labelled (the first ones)."""
    sc = scale_of(scale)
    rng = np.random.default_rng(seed)
    lab_counts = class_counts(sc.labelled, sc.class_mix)
    mix = np.asarray(lab_counts) / sum(lab_counts)
    lab = np.repeat(np.arange(len(lab_counts)), lab_counts)
    # Prototypes of the six classes, then of the emotions outside them: those lie among
    # the six (near their centre), where a classifier of the six is unsure, not far out
    # where it would extrapolate with confidence.
    classes = rng.normal(size=(len(MER2024_CLASSES), LATENT))
    others = classes.mean(axis=0) + OTHER_SPREAD * rng.normal(size=(OTHER_EMOTIONS, LATENT))
    basis = np.vstack([classes, others])
    coords, carrier, truth = _pool(sc, rng, mix)
    # Annotators label ambiguous clips too (by their dominant emotion): a share of the
    # labelled clips lean only partly to their class, the rest towards another one.
    lab_coords = np.zeros((len(lab), len(basis)))
    lab_coords[np.arange(len(lab)), lab] = 1.0
    leaning = rng.random(len(lab)) < sc.labelled_ambiguous
    weight = rng.uniform(0.55, 0.75, size=len(lab))
    other = (lab + 1 + rng.integers(0, len(mix) - 1, size=len(lab))) % len(mix)
    rows = np.flatnonzero(leaning)
    lab_coords[rows, lab[rows]] = weight[rows]
    lab_coords[rows, other[rows]] = 1 - weight[rows]
    centres = np.concatenate([lab_coords @ basis, coords @ basis])
    z = centres + sc.spread * rng.normal(size=centres.shape)
    # How strongly each clip expresses its latent: weak for the pool's clips of no class
    # and for a share of the labelled ones, whose annotators labelled them all the same.
    # (No draw where a scale has no weak labelled clips: tiny and small stay g3's draws.)
    weak = rng.random(len(lab)) < sc.labelled_weak if sc.labelled_weak else np.zeros(len(lab), bool)
    expression = np.where(np.concatenate([weak, truth == NO_CLASS]), WEAK_EXPRESSION, 1.0)
    z = (z * expression[:, None]).astype(np.float32)
    carriers = np.concatenate([lab, carrier])  # whose per-class strength a clip has
    feats = {
        m: _modality(sc, rng, m, _misled(sc, rng, z, carriers, basis, expression), carriers)
        if m == "audio" and sc.misleading_audio
        else _modality(sc, rng, m, z, carriers)
        for m in MODALITIES
    }
    return feats, np.concatenate([lab, truth]), sc.labelled


def _misled(
    sc: Scale,
    rng: np.random.Generator,
    z: np.ndarray,
    carriers: np.ndarray,
    basis: np.ndarray,
    expression: np.ndarray,
) -> np.ndarray:
    """The latent audio carries: on a `misleading_audio` share of clips, moved from the
    clip's class prototype to another class's (at the clip's strength of `expression`)."""
    n, k = len(z), len(MER2024_CLASSES)
    rows = np.flatnonzero(rng.random(n) < sc.misleading_audio)
    other = (carriers[rows] + 1 + rng.integers(0, k - 1, size=len(rows))) % k
    out = z.copy()
    shift = (basis[other] - basis[carriers[rows]]) * expression[rows, None]
    out[rows] += shift.astype(np.float32)
    return out


def _pool(sc: Scale, rng: np.random.Generator, mix: np.ndarray):
    """Each pool clip as weights over the prototypes (a clean clip of a class: one 1),
    the class whose per-class strength it carries, and its truth (NO_CLASS but for the
    clean in-class clips)."""
    n, k = sc.unlabelled, len(mix)
    kinds = rng.choice(
        4, size=n, p=[sc.in_class, *(np.asarray(NO_CLASS_KINDS) * (1 - sc.in_class))]
    )
    carrier = rng.choice(k, size=n, p=mix)
    second = (carrier + 1 + rng.integers(0, k - 1, size=n)) % k  # another of the six
    weight = rng.uniform(0.4, 0.6, size=n)
    other = rng.integers(0, OTHER_EMOTIONS, size=n)
    coords = np.zeros((n, k + OTHER_EMOTIONS))
    rows = np.arange(n)
    coords[rows, carrier] = np.select(
        [kinds == 0, kinds == 1, kinds == 2], [1.0, weight, 0.0], LOW_INFORMATION
    )
    mixed = kinds == 1
    coords[rows[mixed], second[mixed]] = 1 - weight[mixed]
    coords[rows[kinds == 2], k + other[kinds == 2]] = 1.0
    return coords, carrier, np.where(kinds == 0, carrier, NO_CLASS)


def _modality(
    sc: Scale, rng: np.random.Generator, m: str, z: np.ndarray, carriers: np.ndarray
) -> np.ndarray:
    n, dim = len(z), sc.dims[m]
    gain = sc.modality_gain[MODALITIES.index(m)]
    strength = (gain * np.asarray(STRENGTH[m], dtype=np.float32))[carriers][:, None]
    informative = (rng.random(n) >= UNINFORMATIVE[m]).astype(np.float32)[:, None]
    mix = (rng.normal(size=(LATENT, dim)) / np.sqrt(LATENT)).astype(np.float32)
    nuisance_mix = (rng.normal(size=(NUISANCE, dim)) / np.sqrt(NUISANCE)).astype(np.float32)
    out = np.empty((n, dim), dtype=np.float32)
    # A block of rows at a time, in float32: the full scale stays within a few GiB.
    for start in range(0, n, CHUNK):
        rows = slice(start, min(n, start + CHUNK))
        k = rows.stop - rows.start
        signal = (z[rows] * strength[rows] * informative[rows]) @ mix
        nuisance = (
            sc.nuisance * rng.standard_normal((k, NUISANCE), dtype=np.float32)
        ) @ nuisance_mix
        out[rows] = signal + nuisance + sc.noise * rng.standard_normal((k, dim), dtype=np.float32)
    return out


@dataclass
class Layout:
    """A generated dataset as it is laid out: names (shuffled so that labelled and
    unlabelled samples interleave), features in that order, the first `labelled` names
    labelled, and the test names drawn from the pool."""

    names: list[str]
    features: dict[str, np.ndarray]
    labels: np.ndarray
    labelled: int
    test: list[str]


def layout(scale: str | Scale, seed: int) -> Layout:
    feats, labels, n_lab = generate(scale, seed)
    names = [f"sample_{i:08d}" for i in range(len(labels))]
    order = np.random.default_rng(seed + 1).permutation(len(names))
    names = [names[i] for i in order]
    pool_names = names[n_lab:]
    return Layout(
        names,
        feats,
        labels,
        n_lab,
        sorted(pool_names[i] for i in _candidates(scale, labels[n_lab:], seed)),
    )


def _candidates(scale: str | Scale, truth: np.ndarray, seed: int) -> np.ndarray:
    """Pool positions of the test names: `scored` clean clips among clips of no class."""
    sc, rng = scale_of(scale), np.random.default_rng(seed + 2)
    clean, none = np.flatnonzero(truth >= 0), np.flatnonzero(truth == NO_CLASS)
    scored = min(sc.scored, sc.test, len(clean))
    rest = min(sc.test - scored, len(none))
    return np.concatenate(
        [rng.choice(clean, scored, replace=False), rng.choice(none, rest, replace=False)]
    )


def in_memory(scale: str | Scale = "tiny", seed: int = 0) -> MERData:
    """The samples, features and labels that `write` produces, built in memory without
    touching the disk (benchmarks and experiments; `mer-tune` itself reads the written
    layout). Rows stay in generation order and float32, where a load of the written
    folder sorts them by name and packs them as float16: folds and scores differ."""
    lay = layout(scale, seed)
    label = scale if isinstance(scale, str) else f"custom-{zlib.crc32(repr(scale).encode()):08x}"
    n = len(lay.names)
    split = np.full(n, UNLABELLED, dtype=object)
    split[: lay.labelled] = LABELLED
    split[np.isin(lay.names, lay.test)] = TEST
    labels = np.where(np.arange(n) < lay.labelled, lay.labels, -1).astype(np.int64)
    hidden = np.where(split == LABELLED, -1, lay.labels).astype(np.int64)
    return assemble(
        lay.names,
        split,
        labels,
        lay.features,
        list(MER2024_CLASSES),
        hidden,
        f"synthetic:{label}",
        fingerprint=f"synthetic-{GENERATOR}-{label}-seed{seed}",
    )


def write(out: str | Path, scale: str = "tiny", seed: int = 0, release: str | None = None) -> Path:
    """Write a synthetic dataset in the MERTools layout (atomically: temp folder, rename),
    with the label and test-name files of `release` (default: the scale's, RELEASE)."""
    files = LAYOUTS[release or _release(scale)]
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise MerTuneError(f"{out}: folder exists and is not empty")
    lay = layout(scale, seed)
    names, n_lab = lay.names, lay.labelled
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".synth-", dir=out.parent))
    except OSError as err:
        raise MerTuneError(f"{out}: cannot create the dataset there ({err.strerror})") from None
    try:
        for m in MODALITIES:
            folder = tmp / "features" / DEFAULT_FOLDERS[m]
            folder.mkdir(parents=True)
            for name, row in zip(names, lay.features[m], strict=True):
                np.save(folder / f"{name}.npy", row)
        named = np.asarray([*MER2024_CLASSES, NO_CLASS_NAME], dtype=object)
        cls = named[np.where(lay.labels == NO_CLASS, len(MER2024_CLASSES), lay.labels)]
        labelled = pd.DataFrame({"name": names[:n_lab], "discrete": cls[:n_lab]})
        if files["labels"] != LAYOUTS["MER2024-SEMI"]["labels"]:
            labelled["valence"] = 0.0  # MER2025's file has more columns than these two
        labelled.to_csv(tmp / files["labels"], index=False)
        pd.DataFrame({"name": names[n_lab:], "discrete": cls[n_lab:]}).to_csv(
            tmp / TRUTH_FILE, index=False
        )
        pd.DataFrame({"name": lay.test}).to_csv(tmp / files["test"], index=False)
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except OSError as err:  # a full disk, say: the temporary folder goes, nothing is half made
        raise MerTuneError(f"{out}: cannot write the dataset ({err.strerror})") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def builtin_dir(scale: str, seed: int = 0) -> Path:
    """The built-in dataset's folder, generated once and cached."""
    scale_of(scale)  # a known name only: it becomes a folder's name
    base = Path(os.environ.get("MER_TUNE_HOME", Path.home() / ".cache" / "mer-tune"))
    path = base / "synthetic" / f"{scale}-seed{seed}-{GENERATOR}"
    path.parent.mkdir(parents=True, exist_ok=True)
    # Concurrent first runs (several trials, several test workers) generate it once.
    with FileLock(str(path) + ".lock"):
        if not (path / LAYOUTS[_release(scale)]["labels"]).exists():
            write(path, scale, seed)
    return path
