"""A content-addressed store of pipeline stage outputs, shared by the trials of a search.

An entry's key hashes everything its stage depends on (see `pipeline.stage_keys`).
Writes are atomic (temporary name, then rename, then a checksum file marks the entry
complete); two trials that need the same missing stage compute it once (a file lock on
a local or NFS folder, a lease object on other filesystems); an entry whose checksum does
not match is recomputed. Entries load with `torch.load(weights_only=True)`: no pickled
code is ever run.

The store is a folder, or any URI pyarrow's filesystem layer reaches (`s3://`, `gs://`,
`hdfs://`, `file://`), so trials on several nodes can share it.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from filelock import FileLock

LEASE_SECONDS = 6 * 3600  # a lease older than this belongs to a trial that died
POLL_SECONDS = 1.0


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


class LocalFiles:
    """A folder on this machine or on a shared mount."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def read(self, name: str) -> bytes | None:
        try:
            return (self.root / name).read_bytes()
        except FileNotFoundError:
            return None

    def write(self, name: str, blob: bytes) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".tmp-")
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
        os.replace(tmp, self.root / name)

    def delete(self, name: str) -> None:
        (self.root / name).unlink(missing_ok=True)

    def sizes(self, suffix: str) -> dict[str, int]:
        return {p.name: p.stat().st_size for p in self.root.glob(f"*{suffix}")}

    @contextlib.contextmanager
    def lock(self, name: str) -> Iterator[None]:
        with FileLock(str(self.root / name)):
            yield


class ArrowFiles:
    """Any filesystem pyarrow reaches by URI. Objects appear whole (written under a
    temporary name, then moved); the lock is a lease object, read back after a pause so
    that of two trials that wrote it at once, exactly one goes on."""

    def __init__(self, uri: str):
        from pyarrow import fs

        self.fs, self.root = fs.FileSystem.from_uri(uri)
        self.fs.create_dir(self.root, recursive=True)

    def _path(self, name: str) -> str:
        return f"{self.root.rstrip('/')}/{name}"

    def read(self, name: str) -> bytes | None:
        try:
            with self.fs.open_input_stream(self._path(name)) as f:
                return f.readall()
        except (FileNotFoundError, OSError):
            return None

    def write(self, name: str, blob: bytes) -> None:
        tmp = self._path(f".tmp-{uuid.uuid4().hex}")
        with self.fs.open_output_stream(tmp) as f:
            f.write(blob)
        self.fs.move(tmp, self._path(name))

    def delete(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError, OSError):
            self.fs.delete_file(self._path(name))

    def sizes(self, suffix: str) -> dict[str, int]:
        from pyarrow import fs

        infos = self.fs.get_file_info(fs.FileSelector(self.root, allow_not_found=True))
        return {i.base_name: i.size for i in infos if i.base_name.endswith(suffix)}

    @contextlib.contextmanager
    def lock(self, name: str) -> Iterator[None]:
        token = uuid.uuid4().hex
        while True:
            held = self.read(name)
            if held is not None:
                since = held.decode().partition(" ")[2]
                if time.time() - float(since or 0) < LEASE_SECONDS:
                    time.sleep(POLL_SECONDS)  # another trial holds it: look again
                    continue
            self.write(name, f"{token} {time.time()}".encode())
            time.sleep(0.2)  # let a concurrent writer's lease land, then see who won
            current = self.read(name)
            if current is not None and current.decode().startswith(token):
                break
        try:
            yield
        finally:
            self.delete(name)


class StageStore:
    """Stage outputs in a folder or under a URI."""

    def __init__(self, root: str | Path):
        self.root = str(root)
        self.files = ArrowFiles(self.root) if "://" in self.root else LocalFiles(self.root)
        self.hits: list[str] = []

    def get_or_compute(self, stage: str, key: dict, compute: Callable[[], Any]) -> Any:
        digest = key_digest(stage, key)
        found = self._read(digest)
        if found is not None:
            self.hits.append(stage)
            return found
        with self.files.lock(f"{digest}.lock"):
            found = self._read(digest)  # computed by another trial meanwhile
            if found is not None:
                self.hits.append(stage)
                return found
            value = compute()
            self._write(digest, value)
            return value

    def _read(self, digest: str) -> Any | None:
        checksum = self.files.read(f"{digest}.sha256")
        if checksum is None:
            return None
        try:
            blob = self.files.read(f"{digest}.pt")
            if blob is None or hashlib.sha256(blob).hexdigest() != checksum.decode().strip():
                raise ValueError("checksum mismatch")
            return _unpack(torch.load(io.BytesIO(blob), weights_only=True))
        except (OSError, ValueError, RuntimeError, EOFError, UnicodeDecodeError):
            # Corrupt or partial: drop it, and the caller recomputes.
            self.files.delete(f"{digest}.sha256")
            self.files.delete(f"{digest}.pt")
            return None

    def _write(self, digest: str, value: Any) -> None:
        buf = io.BytesIO()
        torch.save(_pack(value), buf)
        blob = buf.getvalue()
        self.files.write(f"{digest}.pt", blob)
        # The checksum goes last: its presence marks a complete entry.
        self.files.write(f"{digest}.sha256", hashlib.sha256(blob).hexdigest().encode())

    # ------------------------------------------------------------ management

    def info(self) -> dict[str, Any]:
        entries: dict[str, dict[str, int]] = {}
        for name, size in self.files.sizes(".pt").items():
            e = entries.setdefault(name.split("-")[0], {"entries": 0, "bytes": 0})
            e["entries"] += 1
            e["bytes"] += size
        return entries

    def clear(self) -> int:
        names = list(self.files.sizes(".pt")) + list(self.files.sizes(".sha256"))
        for name in names:
            self.files.delete(name)
        return sum(1 for n in names if n.endswith(".pt"))
