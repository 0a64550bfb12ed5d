"""The packed form of a dataset: one memory-mappable ``.npy`` per modality (float16, or
float32 where float16 would overflow or round a dimension by more than FP16_MAX_ERROR of
its spread) plus a sample table, written once, mapped after."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from filelock import FileLock

from mer_tune.data.feature_files import npy_shape
from mer_tune.data.layout import (
    MODALITIES,
    TRUTH_FILE,
    DataOptions,
    MERData,
    _feature_dir,
    read_folders,
)
from mer_tune.data.releases import LAYOUTS
from mer_tune.errors import MerTuneError
from mer_tune.outputs import UMASK

PACK_VERSION = 2
FP16_MAX = 60000.0  # larger magnitudes would overflow float16: keep such a modality in float32
# Largest float16 rounding error allowed, in standard deviations of a dimension: the model
# sees standardised features, so a dimension with a large mean and a small spread (seen
# in text features) can lose its signal to float16 although each value is close.
FP16_MAX_ERROR = 0.01
FP16_SAMPLE_ROWS = 16384  # rows that measure the rounding error (evenly spaced)


def _max_abs(arr: np.ndarray, chunk: int = 8192) -> float:
    return max(float(np.abs(arr[i : i + chunk]).max()) for i in range(0, len(arr), chunk))


def fp16_error(arr: np.ndarray, std: np.ndarray) -> float:
    """The largest float16 round-trip error of any dimension, in that dimension's standard
    deviations (root mean square over evenly spaced rows); inf when values overflow."""
    if len(arr) == 0:
        return 0.0
    rows = np.asarray(arr[:: max(1, len(arr) // FP16_SAMPLE_ROWS)], dtype=np.float32)
    if np.abs(rows).max() > FP16_MAX or _max_abs(arr) > FP16_MAX:
        return float("inf")
    err = rows - rows.astype(np.float16).astype(np.float32)
    rms = np.sqrt(np.mean(np.square(err, dtype=np.float64), axis=0))
    return float(np.max(rms / np.maximum(np.asarray(std, dtype=np.float64), 1e-12)))


def storage_dtype(arr: np.ndarray, std: np.ndarray) -> type:
    """float16 where it keeps every dimension within FP16_MAX_ERROR std, else float32."""
    return np.float16 if fp16_error(arr, std) <= FP16_MAX_ERROR else np.float32


def _source_signature(root: Path, opts: DataOptions) -> dict:
    """Cheap change detection: folder and label-file mtimes (adding or removing a file
    changes its folder's mtime). `pack(force=True)` rebuilds after in-place edits."""
    sig: dict[str, object] = {"version": PACK_VERSION, "options": opts.key()}
    for m in MODALITIES:
        d = root / "features" / opts.folders[m]
        sig[m] = d.stat().st_mtime_ns if d.exists() else None
    for name in ("label-disdim.csv", "label-6way.npz", "test-names.csv", TRUTH_FILE):
        p = root / name
        sig[name] = (p.stat().st_mtime_ns, p.stat().st_size) if p.exists() else None
    for name in LAYOUTS["MER2025-SEMI"].values():  # only where present: older packs stay current
        p = root / name
        if p.exists():
            sig[name] = (p.stat().st_mtime_ns, p.stat().st_size)
    for extra in (opts.labels, opts.test_names):
        if extra and Path(extra).exists():
            sig[str(extra)] = Path(extra).stat().st_mtime_ns
    return sig


def default_pack_dir(root: Path, opts: DataOptions) -> Path:
    """Beside the data when writable, else under the user's cache folder."""
    root = root.resolve()
    if os.access(root, os.W_OK):
        return root / ".mer-tune-pack" / opts.key()
    digest = hashlib.sha1(str(root).encode()).hexdigest()[:12]
    return Path.home() / ".cache" / "mer-tune" / "packs" / f"{digest}-{opts.key()}"


def _check_space(folder: Path, needed: int) -> None:
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise MerTuneError(
            f"{folder}: packing needs {needed / 2**30:.2f} GiB free, "
            f"{free / 2**30:.2f} GiB are (free some space or pass another pack folder)"
        )


def _reserve(path: Path, needed: int) -> None:
    """Allocate a memory-mapped file's blocks before writing through the map: on a full
    disk a write through the map kills the process with SIGBUS; this fails cleanly."""
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
    except OSError as err:
        raise MerTuneError(
            f"{path.parent}: cannot reserve {needed / 2**30:.2f} GiB for the pack "
            f"({err.strerror}); free some space"
        ) from None
    finally:
        os.close(fd)


def pack(data: MERData, pack_dir: Path, signature: dict) -> None:
    """Write the packed form atomically: a temporary folder renamed into place, its space
    checked and reserved before anything is written through a memory map."""
    pack_dir.parent.mkdir(parents=True, exist_ok=True)
    dtypes = {m: storage_dtype(a, data.std[m]) for m, a in data.features.items()}
    needed = sum(
        a.shape[0] * a.shape[1] * np.dtype(dtypes[m]).itemsize for m, a in data.features.items()
    )
    _check_space(pack_dir.parent, needed + (64 << 20))  # + the sample table and headroom
    tmp = Path(tempfile.mkdtemp(prefix=".packing-", dir=pack_dir.parent))
    os.chmod(tmp, 0o777 & ~UMASK)  # mkdtemp makes 0700; the pack reads like any folder
    try:
        hasher = hashlib.sha256()
        for m, arr in data.features.items():
            dtype = dtypes[m]
            # Written a chunk at a time into the final memory-mapped file: no second copy.
            out = np.lib.format.open_memmap(
                tmp / f"{m}.npy", mode="w+", dtype=dtype, shape=arr.shape
            )
            _reserve(tmp / f"{m}.npy", needed)
            for start in range(0, len(arr), 8192):
                out[start : start + 8192] = arr[start : start + 8192]
                hasher.update(memoryview(np.ascontiguousarray(out[start : start + 8192])))
            out.flush()
            del out
            np.save(tmp / f"{m}.mean.npy", data.mean[m])
            np.save(tmp / f"{m}.std.npy", data.std[m])
        table = pd.DataFrame({"name": data.names, "split": data.split, "label": data.labels})
        if data.hidden_labels is not None:
            table["hidden_label"] = data.hidden_labels
        table.to_csv(tmp / "samples.csv", index=False)
        hasher.update(table.to_csv(index=False).encode())
        meta = {
            "signature": signature,
            "classes": data.classes,
            "dtypes": {m: np.dtype(d).name for m, d in dtypes.items()},
            "fingerprint": hasher.hexdigest()[:16],
            "source": data.source,
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        for f in tmp.iterdir():  # on disk before the folder is renamed into place
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        if pack_dir.exists():
            shutil.rmtree(pack_dir)
        os.replace(tmp, pack_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def load_pack(pack_dir: Path) -> MERData:
    meta = json.loads((pack_dir / "meta.json").read_text())
    table = pd.read_csv(
        pack_dir / "samples.csv", dtype={"name": str, "split": str}, keep_default_na=False
    )
    feats = {m: np.load(pack_dir / f"{m}.npy", mmap_mode="r") for m in MODALITIES}
    return MERData(
        names=table["name"].to_numpy(dtype=object),
        split=table["split"].to_numpy(dtype=object),
        labels=table["label"].to_numpy(dtype=np.int64),
        features=feats,
        classes=list(meta["classes"]),
        mean={m: np.load(pack_dir / f"{m}.mean.npy") for m in MODALITIES},
        std={m: np.load(pack_dir / f"{m}.std.npy") for m in MODALITIES},
        fingerprint=meta["fingerprint"],
        hidden_labels=table["hidden_label"].to_numpy(dtype=np.int64)
        if "hidden_label" in table
        else None,
        source=meta["source"],
    )


def load(
    root: str | Path,
    opts: DataOptions = DataOptions(),
    pack_dir: Path | None = None,
    force: bool = False,
) -> MERData:
    """Load a dataset through its pack, packing first when missing or out of date."""
    root = Path(root)
    if not root.is_dir():
        raise MerTuneError(f"{root}: data folder not found")
    for m in MODALITIES:
        _feature_dir(root, opts.folders[m], m)
    pack_dir = pack_dir or default_pack_dir(root, opts)
    if pack_dir.parent.exists() and not pack_dir.parent.is_dir():
        raise MerTuneError(
            f"{pack_dir.parent}: is a file; mer-tune keeps its packed copy of the data in a "
            "folder of that name: move the file away"
        )
    signature = _source_signature(root, opts)
    if not force and _current(pack_dir, signature):
        return load_pack(pack_dir)
    made = [p for p in (pack_dir.parent, *pack_dir.parent.parents) if not p.exists()]
    pack_dir.parent.mkdir(parents=True, exist_ok=True)
    try:
        # Two processes packing one folder at once: the second waits, then finds it packed.
        with FileLock(str(pack_dir.parent / f".{pack_dir.name}.lock")):
            if force or not _current(pack_dir, signature):
                pack(read_folders(root, opts), pack_dir, signature)
    except BaseException:
        # A dataset that does not read leaves no pack folder it did not have before.
        for folder in made[:1]:
            shutil.rmtree(folder, ignore_errors=True)
        raise
    return load_pack(pack_dir)


def _current(pack_dir: Path, signature: dict) -> bool:
    try:
        meta = json.loads((pack_dir / "meta.json").read_text())
        if meta["signature"] != json.loads(json.dumps(signature)):
            return False
    except (ValueError, KeyError, OSError):
        return False  # missing or damaged: (re)built by the caller
    damage = pack_damage(pack_dir)
    if damage:
        print(f"note: {pack_dir}: {damage}; packing it again", file=sys.stderr)
    return damage is None


def pack_damage(pack_dir: Path) -> str | None:
    """What is wrong with a pack whose meta.json is intact (a truncated array, a missing
    file, rows that disagree with the sample table), or None when it is whole."""
    try:
        with open(pack_dir / "samples.csv", "rb") as f:
            rows = sum(1 for _ in f) - 1
        for m in MODALITIES:
            for name in (f"{m}.npy", f"{m}.mean.npy", f"{m}.std.npy"):
                shape = npy_shape(pack_dir / name)
                if name == f"{m}.npy" and shape is not None and shape[0] != rows:
                    return f"{name} holds {shape[0]} rows, samples.csv {rows}"
    except MerTuneError as err:
        return str(err).removeprefix(f"{pack_dir}/")
    except OSError as err:
        return f"{Path(err.filename or '').name or 'a file'} cannot be read ({err.strerror})"
    return None
