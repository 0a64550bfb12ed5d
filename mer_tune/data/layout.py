"""MER2024 / MERTools feature folders: the layout, read and validated file by file.

A dataset on disk::

    DIR/features/<extractor>-UTT/<name>.npy    (dim,)   one file per sample
    DIR/features/<extractor>-FRA/<name>.npy    (T, dim) frame level, mean-pooled here
    DIR/features/<extractor>-UTT/<name>/*.npy  a folder of frame files may stand in
    DIR/label-disdim.csv                       name, discrete
    DIR/label-6way.npz                         pickled dicts: read only with trust_pickle
    DIR/test-names.csv                         optional: names kept apart as the test set

Reading 120k x 3 small files is slow: `pack.py` packs them once, later loads map the pack.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from mer_tune.data.feature_files import list_samples, stack
from mer_tune.data.releases import LAYOUTS, find_layout
from mer_tune.errors import MerTuneError
from mer_tune.user_files import check_file

MER2024_CLASSES = ["neutral", "angry", "happy", "sad", "worried", "surprise"]
MODALITIES = ["audio", "visual", "text"]
# The MER2024 extractors (what `mer-tune extract` runs by default) and the folders they fill.
DEFAULT_MODELS = {
    "visual": "openai/clip-vit-large-patch14",
    "audio": "TencentGameMate/chinese-hubert-large",
    "text": "baichuan-inc/Baichuan2-13B-Base",
}


def model_folder_name(model: str, level: str = "utt") -> str:
    """`openai/clip-vit-large-patch14` -> `clip-vit-large-patch14-UTT`, as MERTools names it
    (a local folder by its resolved name, so `.` works too)."""
    path = Path(model)
    name = path.resolve().name if path.exists() else Path(model.rstrip("/")).name
    return f"{name}-{'UTT' if level == 'utt' else 'FRA'}"


# clip-vit-large-patch14-UTT, chinese-hubert-large-UTT, Baichuan2-13B-Base-UTT
DEFAULT_FOLDERS = {m: model_folder_name(spec) for m, spec in DEFAULT_MODELS.items()}
LABELLED, UNLABELLED, TEST = "labelled", "unlabelled", "test"
# A search's outer holdout: labelled samples whose labels no trial ever sees.
HOLDOUT = "holdout"
TRUTH_FILE = "synthetic-truth.csv"  # hidden labels of a synthetic pool: reporting only
# A synthetic pool clip of no one class (a mixture, another emotion, little signal): in
# the truth file NO_CLASS_NAME, in hidden_labels NO_CLASS (-1 stays "truth unknown"): a
# pseudo-label on it is a wrong one.
NO_CLASS, NO_CLASS_NAME = -2, "none"
# A label or test-name list: MER2025's 20,000 candidates take under a megabyte.
MAX_LIST_BYTES = 256 << 20


@dataclass(frozen=True)
class DataOptions:
    """Where the modalities and labels are, and how to read them."""

    folders: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_FOLDERS))
    classes: tuple[str, ...] = tuple(MER2024_CLASSES)
    labels: str | None = None  # a label file; default: label-disdim.csv, else label-6way.npz
    test_names: str | None = None  # csv with a `name` column, or one name a line
    trust_pickle: bool = False  # allow reading label-6way.npz (it holds pickled objects)

    def key(self) -> str:
        text = json.dumps([self.folders, list(self.classes), self.labels, self.test_names])
        return hashlib.sha1(text.encode()).hexdigest()[:12]


@dataclass
class MERData:
    """Features and labels of one dataset, features held once (float16 or memory-mapped)."""

    names: np.ndarray  # (N,) str
    split: np.ndarray  # (N,) labelled / unlabelled / test
    labels: np.ndarray  # (N,) int64 class index, -1 where unknown
    features: dict[str, np.ndarray]  # modality -> (N, dim)
    classes: list[str]
    mean: dict[str, np.ndarray]  # per-dimension statistics over all samples, for standardising
    std: dict[str, np.ndarray]
    fingerprint: str
    hidden_labels: np.ndarray | None = None  # synthetic truth of the pool; never used to train
    source: str = ""

    @property
    def dims(self) -> dict[str, int]:
        return {m: int(a.shape[1]) for m, a in self.features.items()}

    def indices(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.split == split)

    def class_counts(self, split: str = LABELLED) -> dict[str, int]:
        lab = self.labels[self.split == split]
        return {c: int((lab == i).sum()) for i, c in enumerate(self.classes)}

    def nbytes(self) -> int:
        return sum(int(a.nbytes) for a in self.features.values())

    def shareable(self) -> MERData:
        """The same data with plain-ndarray views of the (memory-mapped) features.
        numpy pickles an ndarray subclass such as np.memmap in-band, so Ray would copy
        the features into every trial's heap (benchmarks/RESULTS.md, "Memory with 1, 2
        and 4 concurrent trials"); a plain array goes out-of-band into the object store,
        and every trial reads the one shared copy."""
        return dataclasses.replace(
            self, features={m: np.asarray(a) for m, a in self.features.items()}
        )


# ---------------------------------------------------------------- reading the MERTools layout


def _feature_dir(root: Path, folder: str, modality: str) -> Path:
    path = root / "features" / folder
    if not path.is_dir():
        path2 = root / folder
        if path2.is_dir():
            return path2
        raise MerTuneError(f"{path}: feature folder for {modality} not found")
    return path


def _read_labels(root: Path, opts: DataOptions) -> dict[str, str]:
    files = LAYOUTS[find_layout(root)]
    if opts.labels:
        path = Path(opts.labels)
        if not path.is_absolute() and not path.exists():
            path = root / opts.labels
    elif (root / files["labels"]).exists():
        path = root / files["labels"]
    elif (root / files["pickled"]).exists():
        path = root / files["pickled"]
    else:
        names = " or ".join(f"{f['labels']} ({name})" for name, f in LAYOUTS.items())
        raise MerTuneError(f"{root}: no label file ({names})")
    if not path.exists() and not path.is_symlink():
        raise MerTuneError(f"{path}: label file not found")
    if path.is_dir():
        raise MerTuneError(f"{path}: is a folder; --labels names a label file (CSV or .npz)")
    check_file(path, "label", MAX_LIST_BYTES, MerTuneError)
    if path.suffix == ".npz":
        return _read_npz_labels(path, opts.trust_pickle)
    table = _read_name_discrete(path, "label CSV")
    twice = table["name"][table["name"].duplicated()]
    if len(twice):
        raise MerTuneError(
            f"{path}: sample '{twice.iloc[0]}' is listed more than once "
            f"({len(twice)} repeated rows); each name needs one label"
        )
    # Compared trimmed: 'neutral ' is neutral (a spreadsheet's stray space, not a class).
    labels = table["discrete"].str.strip()
    empty = table["name"][labels == ""]
    if len(empty):
        raise MerTuneError(
            f"{path}: sample '{empty.iloc[0]}' has an empty label ({len(empty)} such rows); "
            "give each labelled sample its class, or leave it out of the file"
        )
    return dict(zip(table["name"], labels, strict=True))


def _read_npz_labels(path: Path, trust_pickle: bool) -> dict[str, str]:
    if not trust_pickle:
        raise MerTuneError(
            f"{path}: holds pickled objects, which can run code when read; "
            "pass --trust-pickle if you trust this file, or convert it to label-disdim.csv"
        )
    with np.load(path, allow_pickle=trust_pickle) as npz:  # explicit opt-in above
        if "train_corpus" not in npz:
            raise MerTuneError(f"{path}: no 'train_corpus' key (has {', '.join(npz.files)})")
        corpus = npz["train_corpus"].tolist()
    return {name: str(item["emo"]) for name, item in corpus.items()}


def _read_names(path: str | Path) -> list[str]:
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        raise MerTuneError(f"{path}: test-name file not found")
    if path.is_dir():
        raise MerTuneError(f"{path}: is a folder; --test-names names a CSV or text file")
    if check_file(path, "test-name", MAX_LIST_BYTES, MerTuneError) == 0:
        raise MerTuneError(f"{path}: the test-name file is empty")
    if path.suffix == ".csv":
        try:
            table = pd.read_csv(path, dtype=str, keep_default_na=False)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
            raise MerTuneError(f"{path}: cannot parse the test-name CSV ({err})") from None
        if "name" not in table.columns:
            raise MerTuneError(f"{path}: missing column 'name'")
        return list(table["name"])
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise MerTuneError(f"{path}: not a UTF-8 text file of test names") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def _test_names(
    root: Path, opts: DataOptions, names: list[str], labels_by_name: dict[str, str]
) -> set[str]:
    """The test names (--test-names, else the release's own file), checked: they name
    samples of this data, none of them labelled, and under MER2025-SEMI every candidate
    has features."""
    layout = find_layout(root)
    default_test = root / LAYOUTS[layout]["test"]
    test_file = opts.test_names or (default_test if default_test.exists() else None)
    test_set = set(_read_names(test_file)) if test_file else set()
    if opts.test_names and not test_set:  # given on purpose, it must name some
        raise MerTuneError(f"{test_file}: lists no test names")
    # Names that are not samples are ignored (a test list may cover more than this data),
    # but when none is, the file belongs to other data.
    if test_set and test_set.isdisjoint(names):
        raise MerTuneError(
            f"{test_file}: none of its {len(test_set)} test names is a sample in {root} "
            f"(e.g. '{min(test_set)}')"
        )
    lacking = sorted(test_set - set(names))
    if layout == "MER2025-SEMI" and not opts.test_names and lacking:
        # MER2025's scorer wants a prediction for every candidate.
        raise MerTuneError(
            f"{test_file}: {len(lacking)} of its candidates have no features in {root} "
            f"(e.g. '{lacking[0]}'); extract them (mer-tune extract): a submission needs "
            "a row for each"
        )

    both = sorted(test_set & set(labels_by_name) & set(names))
    if both:
        shown = ", ".join(f"'{n}'" for n in both[:3])
        raise MerTuneError(
            f"{test_file}: {len(both)} of its test names are labelled samples ({shown}); "
            "a test name is scored, never trained on: remove them from one of the two files"
        )
    return test_set


def read_folders(root: str | Path, opts: DataOptions = DataOptions()) -> MERData:
    """Read and validate a MERTools dataset file by file (slow at full scale: see `load`)."""
    root = Path(root)
    if not root.is_dir():
        raise MerTuneError(f"{root}: data folder not found")
    per_mod = {m: list_samples(_feature_dir(root, opts.folders[m], m)) for m in MODALITIES}
    names = _common_names(per_mod, root, opts)
    labels_by_name = _read_labels(root, opts)
    test_set = _test_names(root, opts, names, labels_by_name)
    classes = list(opts.classes)
    index = {c: i for i, c in enumerate(classes)}
    missing = sorted(set(labels_by_name) - set(names))
    if missing:
        raise MerTuneError(
            f"sample '{missing[0]}' has a label but no features ({len(missing)} such)"
        )
    split = np.full(len(names), UNLABELLED, dtype=object)
    labels = np.full(len(names), -1, dtype=np.int64)
    for i, name in enumerate(names):
        if name in test_set:
            split[i] = TEST
        elif name in labels_by_name:
            emo = labels_by_name[name]
            if emo not in index:
                found = sorted(set(labels_by_name.values()))
                raise MerTuneError(
                    f"label '{emo}' of sample '{name}' is not in the class list "
                    f"({', '.join(classes)}); the label file has {len(found)} classes: "
                    f"--set 'data.classes=[{', '.join(map(_yaml_word, found))}]' reads them all"
                )
            split[i], labels[i] = LABELLED, index[emo]

    features = {
        m: stack(per_mod[m], names, root / "features" / opts.folders[m], m) for m in MODALITIES
    }
    hidden = _read_truth(root, names, index)
    return assemble(names, split, labels, features, classes, hidden, str(root))


def assemble(
    names: list[str],
    split: np.ndarray,
    labels: np.ndarray,
    features: dict[str, np.ndarray],
    classes: list[str],
    hidden_labels: np.ndarray | None,
    source: str,
    fingerprint: str = "",
) -> MERData:
    """A validated MERData from its arrays, with the standardising statistics computed."""
    moments = {m: _moments(a) for m, a in features.items()}
    data = MERData(
        names=np.asarray(names, dtype=object),
        split=split,
        labels=labels,
        features=features,
        classes=classes,
        mean={m: moments[m][0] for m in MODALITIES},
        std={m: moments[m][1] for m in MODALITIES},
        fingerprint=fingerprint,
        hidden_labels=hidden_labels,
        source=source,
    )
    validate(data)
    return data


def _moments(arr: np.ndarray, chunk: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension mean and std in float64, a chunk of rows at a time: no full-size
    temporary copies of a multi-GB feature matrix."""
    total = np.zeros(arr.shape[1])
    sq = np.zeros(arr.shape[1])
    for start in range(0, len(arr), chunk):
        block = np.asarray(arr[start : start + chunk], dtype=np.float64)
        total += block.sum(0)
        sq += (block * block).sum(0)
    mean = total / len(arr)
    std = np.sqrt(np.maximum(sq / len(arr) - mean * mean, 0.0)) + 1e-6
    return mean.astype(np.float32), std.astype(np.float32)


def _common_names(per_mod: dict[str, dict[str, Path]], root: Path, opts: DataOptions) -> list[str]:
    all_names = set().union(*per_mod.values())
    for m in MODALITIES:
        lacking = sorted(all_names - set(per_mod[m]))
        if lacking:
            folder = root / "features" / opts.folders[m]
            raise MerTuneError(
                f"sample '{lacking[0]}' has no {m} features in {folder} ({len(lacking)} such samples)"
            )
    if not all_names:
        raise MerTuneError(f"{root}: the feature folders hold no samples")
    return sorted(all_names)


def _yaml_word(text: str) -> str:
    """A class name as a YAML list item that reads back as the same text when pasted."""
    return text if re.fullmatch(r"[A-Za-z_][\w.-]*", text) else json.dumps(text)


def _read_name_discrete(path: Path, what: str) -> pd.DataFrame:
    """A CSV with columns name and discrete (a label file, the synthetic truth), as text."""
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as err:
        raise MerTuneError(f"{path}: cannot parse {what} ({err})") from None
    for col in ("name", "discrete"):
        if col not in table.columns:
            raise MerTuneError(f"{path}: missing column '{col}' (has {', '.join(table.columns)})")
    return table


def _read_truth(root: Path, names: list[str], index: dict[str, int]) -> np.ndarray | None:
    path = root / TRUTH_FILE
    if not path.exists():
        return None
    truth = _read_name_discrete(path, "the truth CSV")
    lookup = dict(zip(truth["name"], truth["discrete"], strict=True))
    codes = index | {NO_CLASS_NAME: NO_CLASS}
    return np.asarray([codes.get(lookup.get(n, ""), -1) for n in names], dtype=np.int64)


def validate(data: MERData) -> None:
    """Problems that make a dataset unusable for the method, as one-line errors."""
    n_lab = int((data.split == LABELLED).sum())
    if n_lab == 0:
        raise MerTuneError(f"{data.source}: no labelled samples (the labelled set is empty)")
    for cls, count in data.class_counts().items():
        if count == 0:
            raise MerTuneError(f"{data.source}: no labelled sample of class '{cls}'")
    for m, arr in data.features.items():
        if not np.isfinite(arr[: min(len(arr), 4096)]).all():
            raise MerTuneError(f"{data.source}: NaN or inf values in {m} features")
