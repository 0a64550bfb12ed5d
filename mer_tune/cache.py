"""A content-addressed store of pipeline stage outputs, shared by the trials of a search.

An entry's key hashes everything its stage depends on (see `pipeline.stage_keys`).
Writes are atomic (temporary file, then rename, then a checksum file marks it complete);
a per-key file lock makes two trials that need the same missing stage compute it once;
an entry whose checksum does not match is recomputed. Entries load with
`torch.load(weights_only=True)`: no pickled code is ever run.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from filelock import FileLock


def key_digest(stage: str, key: dict) -> str:
    text = json.dumps({"stage": stage, "key": key}, sort_keys=True, default=str)
    return f"{stage}-{hashlib.sha256(text.encode()).hexdigest()[:32]}"


def _pack(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": torch.from_numpy(np.ascontiguousarray(obj))}
    if isinstance(obj, dict):
        return {k: _pack(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_pack(v) for v in obj]
    return obj


def _unpack(obj: Any) -> Any:
    if isinstance(obj, dict):
        if set(obj) == {"__ndarray__"}:
            return obj["__ndarray__"].numpy()
        return {k: _unpack(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_unpack(v) for v in obj]
    return obj


class StageStore:
    """Stage outputs in a folder (local disk or a shared mount such as NFS)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.hits: list[str] = []

    def _paths(self, digest: str) -> tuple[Path, Path, Path]:
        return (
            self.root / f"{digest}.pt",
            self.root / f"{digest}.sha256",
            self.root / f"{digest}.lock",
        )

    def get_or_compute(self, stage: str, key: dict, compute: Callable[[], Any]) -> Any:
        digest = key_digest(stage, key)
        data_path, sum_path, lock_path = self._paths(digest)
        found = self._read(data_path, sum_path)
        if found is not None:
            self.hits.append(stage)
            return found
        with FileLock(str(lock_path)):
            found = self._read(data_path, sum_path)  # computed by another trial meanwhile
            if found is not None:
                self.hits.append(stage)
                return found
            value = compute()
            self._write(value, data_path, sum_path)
            return value

    def _read(self, data_path: Path, sum_path: Path) -> Any | None:
        if not sum_path.exists():
            return None
        try:
            blob = data_path.read_bytes()
            if hashlib.sha256(blob).hexdigest() != sum_path.read_text().strip():
                raise ValueError("checksum mismatch")
            return _unpack(torch.load(io.BytesIO(blob), weights_only=True))
        except (OSError, ValueError, RuntimeError, EOFError):
            # Corrupt or partial: drop it, and the caller recomputes.
            sum_path.unlink(missing_ok=True)
            data_path.unlink(missing_ok=True)
            return None

    def _write(self, value: Any, data_path: Path, sum_path: Path) -> None:
        buf = io.BytesIO()
        torch.save(_pack(value), buf)
        blob = buf.getvalue()
        for path, content in (
            (data_path, blob),
            (sum_path, hashlib.sha256(blob).hexdigest().encode()),
        ):
            fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".tmp-")
            with os.fdopen(fd, "wb") as f:
                f.write(content)
            os.replace(tmp, path)

    # ------------------------------------------------------------ management

    def info(self) -> dict[str, Any]:
        entries: dict[str, dict[str, int]] = {}
        for path in self.root.glob("*.pt"):
            stage = path.name.split("-")[0]
            e = entries.setdefault(stage, {"entries": 0, "bytes": 0})
            e["entries"] += 1
            e["bytes"] += path.stat().st_size
        return entries

    def clear(self) -> int:
        count = len(list(self.root.glob("*.pt")))
        shutil.rmtree(self.root, ignore_errors=True)
        self.root.mkdir(parents=True, exist_ok=True)
        return count
