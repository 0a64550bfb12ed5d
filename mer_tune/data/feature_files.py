"""Reading feature files: one `.npy` array a sample (or a folder of frame arrays), never
unpickled, each file checked before its data is read. A `.npy` header states the array's
shape and type: a file holding fewer bytes than its header claims (truncated, or a header
written to make a reader allocate gigabytes), or a sample whose dimension differs from the
modality's, is one line naming the file, before any of its data is loaded."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from mer_tune.errors import MerTuneError


def list_samples(folder: Path) -> dict[str, Path]:
    """Sample name -> its .npy file or frame folder. A link that leads nowhere (a loop,
    a missing target) is one line naming it."""
    out: dict[str, Path] = {}
    with os.scandir(folder) as entries:
        for entry in entries:
            try:
                if entry.name.endswith(".npy") and entry.is_file():
                    out[entry.name[:-4]] = Path(entry.path)
                elif entry.is_dir():
                    out[entry.name] = Path(entry.path)
                elif entry.is_symlink():
                    os.stat(entry.path)  # raises for a loop or a missing target
            except OSError as err:
                raise MerTuneError(f"{entry.path}: cannot read ({err.strerror})") from None
    return out


NPY_MAGIC = b"\x93NUMPY"
LFS_POINTER = b"version https://git-lfs"


def npy_shape(path: Path) -> tuple[int, ...] | None:
    """The shape a .npy file's header states, once the file is known to hold the bytes
    it claims (None for a header version this check does not read: np.load checks)."""
    with open(path, "rb") as f:
        head = f.read(len(LFS_POINTER))
        if head and not head.startswith(NPY_MAGIC):
            if head.startswith(LFS_POINTER):
                raise MerTuneError(
                    f"{path}: a Git LFS pointer, not the array (fetch the files: git lfs pull)"
                )
            raise MerTuneError(f"{path}: not a .npy file (it lacks numpy's header)")
        f.seek(0)
        if not head:
            return None  # empty: np.load says so
        version = np.lib.format.read_magic(f)
        readers = {(1, 0): np.lib.format.read_array_header_1_0}
        readers[(2, 0)] = np.lib.format.read_array_header_2_0
        if version not in readers:
            return None
        shape, _, dtype = readers[version](f)
        claimed = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        holds = os.fstat(f.fileno()).st_size - f.tell()
    if not dtype.hasobject and holds < claimed:
        raise MerTuneError(
            f"{path}: its header claims a {'x'.join(map(str, shape))} {dtype} array "
            f"({claimed} bytes) but the file holds {holds}: truncated or damaged"
        )
    return tuple(shape)


def load_npy(path: Path) -> np.ndarray:
    """One .npy array, never unpickled. A file without numpy's header is named for what
    it is: numpy would call any such file pickled data."""
    npy_shape(path)
    with open(path, "rb") as f:
        return np.load(f, allow_pickle=False)


def read_feature(path: Path) -> np.ndarray:
    try:
        if path.is_dir():
            frames = [load_npy(p) for p in sorted(path.glob("*.npy"))]
            if not frames:
                raise MerTuneError(f"{path}: frame folder holds no .npy files")
            arr = np.stack([np.asarray(f).reshape(-1) for f in frames])
        else:
            arr = load_npy(path)
    except EOFError:
        raise MerTuneError(f"{path}: empty or truncated .npy file") from None
    except (ValueError, OSError) as err:
        raise MerTuneError(f"{path}: cannot read features ({err})") from None
    if arr.dtype.kind not in "biuf":  # strings or objects do not convert to float32
        raise MerTuneError(f"{path}: features must be numbers, got dtype {arr.dtype}")
    if arr.size == 0:
        raise MerTuneError(f"{path}: holds no feature values (shape {arr.shape})")
    arr = np.asarray(arr, dtype=np.float32)
    if arr.ndim == 2:  # frame level (T, dim): mean over time
        arr = arr.mean(axis=0)
    if arr.ndim != 1:
        raise MerTuneError(f"{path}: expected shape (dim,) or (T, dim), got {arr.shape}")
    return arr


def stack(files: dict[str, Path], names: list[str], folder: Path, modality: str) -> np.ndarray:
    first = read_feature(files[names[0]])
    out = np.empty((len(names), first.shape[0]), dtype=np.float32)
    for i, name in enumerate(names):
        if i and not files[name].is_dir():  # the dimension checked before the data is read
            _check_dim(files[name], first.shape[0], f"{modality} dim {{}} differs from "
                       f"{first.shape[0]} of {names[0]} in {folder}")  # fmt: skip
        arr = first if i == 0 else read_feature(files[name])
        if arr.shape != first.shape:
            raise MerTuneError(
                f"{files[name]}: {modality} dim {arr.shape[0]} differs from {first.shape[0]} "
                f"of {names[0]} in {folder}"
            )
        if not np.isfinite(arr).all():
            raise MerTuneError(f"{files[name]}: NaN or inf values in {modality} features")
        out[i] = arr
    return out


def _check_dim(path: Path, dim: int, message: str) -> None:
    try:
        shape = npy_shape(path)
    except (ValueError, OSError) as err:
        raise MerTuneError(f"{path}: cannot read features ({err})") from None
    if shape and len(shape) in (1, 2) and shape[-1] != dim:
        raise MerTuneError(f"{path}: {message.format(shape[-1])}")
