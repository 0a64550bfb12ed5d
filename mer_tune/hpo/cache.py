"""A content-addressed store of pipeline stage outputs, shared by the trials of a search.

An entry's key hashes everything its stage depends on (see `stages.stage_keys`).
Writes are atomic (temporary name, then rename; the signature file, written last, marks
the entry complete). Entries are signed: with a search's secret key (HMAC-SHA256, the key
kept in the search folder, mode 0600; entries are named for their key, so searches with
different keys sharing a store keep apart) an entry that anyone else wrote or altered on
a shared store is refused and recomputed; without a key, a SHA-256 checksum still
catches damage. An entry whose signature does not match, or that does not load, is deleted and
recomputed; a read that merely fails (a network blip) is recomputed without deleting
anything. Entries load with `torch.load(weights_only=True)`: no pickled code is run.

Two trials that need the same missing stage compute it once: a file lock on a local or
NFS folder, a lease object on other filesystems. A lease names its owner, expires after
`LEASE_SECONDS` unless its owner's heartbeat renews it, and is released by its owner
alone; every wait for a lock is bounded by the trial's timeout.

The store is a folder, or any URI pyarrow's filesystem layer reaches (`s3://`, `gs://`,
`hdfs://`, `file://`), so trials on several nodes can share it.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import io
import json
import os
import pickle
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from filelock import FileLock
from filelock import Timeout as FileLockTimeout

from mer_tune.errors import MerTuneError
from mer_tune.outputs import write_bytes

MARKER = ".mer-tune-cache"  # `cache clear` deletes only in a folder that carries it
LEASE_SECONDS = 60.0  # a lease not renewed for this long belonged to a trial that died
HEARTBEAT_SECONDS = 15.0
POLL_SECONDS = 1.0
# How long a lease's writer waits before reading it back. A rival that read "no lease"
# just before ours landed writes its own within this time unless it stalls longer (a
# loaded machine: 0.2 s let two trials both compute a stage); the cost is this wait once
# per stage computed, against stages of tens of seconds.
SETTLE_SECONDS = 1.0
# <stage>-<key digest>[.<signing key id>].<pt|sig|sha256|lock>
ENTRY = re.compile(r"[a-z_]+-[0-9a-f]{32}(\.[0-9a-f]{12})?\.(pt|sig|sha256|lock)")


class CacheWaitTimeout(MerTuneError):
    """Waited longer than the trial may run for another trial's lock on a stage."""


def key_digest(stage: str, key: dict) -> str:
    text = json.dumps({"stage": stage, "key": key}, sort_keys=True, default=str)
    return f"{stage}-{hashlib.sha256(text.encode()).hexdigest()[:32]}"


def new_key() -> bytes:
    return os.urandom(32)


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
        """The object's bytes; None when it does not exist; OSError when reading fails."""
        try:
            return (self.root / name).read_bytes()
        except FileNotFoundError:
            return None

    def write(self, name: str, blob: bytes) -> None:
        write_bytes(self.root / name, blob)

    def delete(self, name: str) -> None:
        (self.root / name).unlink(missing_ok=True)

    def names(self) -> dict[str, int]:
        return {p.name: p.stat().st_size for p in self.root.iterdir() if p.is_file()}

    @contextlib.contextmanager
    def lock(self, name: str, timeout: float | None) -> Iterator[None]:
        try:
            with FileLock(str(self.root / name), timeout=-1 if timeout is None else timeout):
                yield
        except FileLockTimeout:
            raise CacheWaitTimeout(
                f"{self.root / name}: waited {timeout:g} s for another trial's lock"
            ) from None


class ArrowFiles:
    """Any filesystem pyarrow reaches by URI. Objects appear whole (written under a
    temporary name, then moved)."""

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
        except FileNotFoundError:
            return None

    def write(self, name: str, blob: bytes) -> None:
        tmp = self._path(f".tmp-{uuid.uuid4().hex}")
        try:
            with self.fs.open_output_stream(tmp) as f:
                f.write(blob)
            self.fs.move(tmp, self._path(name))
        except BaseException:
            with contextlib.suppress(OSError):
                self.fs.delete_file(tmp)
            raise

    def delete(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError, OSError):
            self.fs.delete_file(self._path(name))

    def names(self) -> dict[str, int]:
        from pyarrow import fs

        infos = self.fs.get_file_info(fs.FileSelector(self.root, allow_not_found=True))
        return {i.base_name: i.size for i in infos if i.type == fs.FileType.File}

    @contextlib.contextmanager
    def lock(self, name: str, timeout: float | None) -> Iterator[None]:
        with Lease(self, name, timeout):
            yield


class Lease:
    """A lock on a store without atomic create-if-absent (S3, GCS): an object holding
    `owner-token time`. Whoever finds no live lease writes theirs, waits a settle time
    (SETTLE_SECONDS, or three times the write's own duration if longer, so that a
    concurrent writer's lease has landed even on a slow store) and reads it back: the
    token found there wins. The holder's heartbeat renews the time while the stage
    computes and checks the lease is still its own; only the owner deletes it. A lease
    whose time is older than LEASE_SECONDS (its trial died: a spot worker, a SIGKILL) is
    taken over."""

    def __init__(self, files: ArrowFiles, name: str, timeout: float | None):
        self.files, self.name, self.timeout = files, name, timeout
        self.token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def _holder(self) -> tuple[str, float] | None:
        try:
            held = self.files.read(self.name)
        except OSError:
            return ("unknown", time.time())  # unreadable: assume someone holds it
        if held is None:
            return None
        token, _, since = held.decode(errors="replace").partition(" ")
        try:
            return token, float(since)
        except ValueError:
            return token, 0.0  # garbled: treated as expired

    def _write(self) -> float:
        t0 = time.monotonic()
        self.files.write(self.name, f"{self.token} {time.time()}".encode())
        return time.monotonic() - t0

    def __enter__(self) -> Lease:
        started = time.monotonic()
        while True:
            if self.timeout is not None and time.monotonic() - started > self.timeout:
                raise CacheWaitTimeout(
                    f"{self.files._path(self.name)}: waited {self.timeout:g} s for another "
                    "trial's lease"
                )
            held = self._holder()
            if held is not None and time.time() - held[1] < LEASE_SECONDS:
                time.sleep(POLL_SECONDS)  # another trial holds it: look again
                continue
            took = self._write()
            time.sleep(max(SETTLE_SECONDS, 3 * took))
            held = self._holder()
            if held is not None and held[0] == self.token:
                break
        self._beat = threading.Thread(target=self._heartbeat, daemon=True)
        self._beat.start()
        return self

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            held = self._holder()
            if held is None or held[0] != self.token:
                return  # lost (taken over after a long stall): stop renewing someone else's
            with contextlib.suppress(OSError):
                self._write()

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join(timeout=5)
        held = self._holder()
        if held is not None and held[0] == self.token:  # release only our own lease
            self.files.delete(self.name)


class StageStore:
    """Stage outputs in a folder or under a URI, signed with `key` when given."""

    def __init__(self, root: str | Path, key: bytes | None = None, timeout: float | None = None):
        self.root = str(root)
        self.files = ArrowFiles(self.root) if "://" in self.root else LocalFiles(self.root)
        self.key = key
        # Entries are named for the key that signs them: searches with different keys
        # sharing one --cache-dir keep apart instead of refusing each other's entries.
        self.key_id = hashlib.sha256(key).hexdigest()[:12] if key is not None else None
        self.timeout = timeout
        self.hits: list[str] = []
        self.rejected = 0
        if self.files.read(MARKER) is None:
            self.files.write(MARKER, b"mer-tune stage cache\n")

    def _signature(self, blob: bytes) -> bytes:
        if self.key is None:
            return hashlib.sha256(blob).hexdigest().encode()
        return hmac.new(self.key, blob, hashlib.sha256).hexdigest().encode()

    def _names(self, digest: str) -> tuple[str, str]:
        """(entry file, signature file) of a key digest."""
        if self.key_id is None:
            return f"{digest}.pt", f"{digest}.sha256"
        return f"{digest}.{self.key_id}.pt", f"{digest}.{self.key_id}.sig"

    def get_or_compute(self, stage: str, key: dict, compute: Callable[[], Any]) -> Any:
        digest = key_digest(stage, key)
        found = self._read(digest)
        if found is not None:
            self.hits.append(stage)
            return found
        with self.files.lock(f"{digest}.lock", self.timeout):
            found = self._read(digest, locked=True)  # computed by another trial meanwhile
            if found is not None:
                self.hits.append(stage)
                return found
            value = compute()
            self._write(digest, value)
            return value

    def _read(self, digest: str, locked: bool = False) -> Any | None:
        entry, sig_file = self._names(digest)
        try:
            signature = self.files.read(sig_file)
            if signature is None:
                # Unsigned. Outside the lock it may be a write in progress (the signature
                # goes last); under the lock no cooperating trial is writing it: refuse it.
                if locked and self.files.read(entry) is not None:
                    self._reject(digest, "unsigned")
                return None
            blob = self.files.read(entry)
        except OSError:
            return None  # a transient read error: recompute, delete nothing
        if blob is None or not hmac.compare_digest(self._signature(blob), signature.strip()):
            self._reject(digest, "signature mismatch")
            return None
        try:
            return _unpack(torch.load(io.BytesIO(blob), weights_only=True))
        except (
            pickle.UnpicklingError,
            RuntimeError,
            EOFError,
            ValueError,
            OSError,
            AttributeError,
        ):
            self._reject(digest, "does not load")
            return None

    def _reject(self, digest: str, why: str) -> None:
        """Delete a proven-bad entry (the caller recomputes it) and count it."""
        self.rejected += 1
        for name in self._names(digest):
            self.files.delete(name)
        with contextlib.suppress(OSError):
            self.files.write(f".rejected-{digest}-{uuid.uuid4().hex[:8]}", why.encode())

    def _write(self, digest: str, value: Any) -> None:
        buf = io.BytesIO()
        torch.save(_pack(value), buf)
        blob = buf.getvalue()
        entry, sig_file = self._names(digest)
        self.files.write(entry, blob)
        # The signature goes last: its presence marks a complete entry.
        self.files.write(sig_file, self._signature(blob))

    # ------------------------------------------------------------ management

    def info(self) -> dict[str, Any]:
        """Entries and bytes per stage, and how many entries were refused (forged,
        unsigned, damaged) and recomputed."""
        entries: dict[str, Any] = {}
        names = self.files.names()
        for name, size in names.items():
            if name.endswith(".pt") and ENTRY.fullmatch(name):
                e = entries.setdefault(name.split("-")[0], {"entries": 0, "bytes": 0})
                e["entries"] += 1
                e["bytes"] += size
        rejected = sum(1 for n in names if n.startswith(".rejected-"))
        return {"stages": entries, "rejected": rejected}

    def clear(self) -> int:
        """Delete every entry, lease, leftover temporary file and rejection record; only
        names mer-tune writes are touched. Returns the number of entries removed."""
        removed = 0
        for name in self.files.names():
            temporary = name.startswith(".tmp-") or (name.startswith(".") and name.endswith(".tmp"))
            if ENTRY.fullmatch(name) or temporary or name.startswith(".rejected-"):
                removed += name.endswith(".pt")
                self.files.delete(name)
        return removed


def is_cache(root: str | Path) -> bool:
    """Whether `root` is a folder (or URI) mer-tune made as a stage cache."""
    root = str(root)
    if "://" not in root:
        return (Path(root) / MARKER).is_file()
    from pyarrow import fs

    try:
        filesystem, path = fs.FileSystem.from_uri(root)
        return filesystem.get_file_info(f"{path.rstrip('/')}/{MARKER}").type == fs.FileType.File
    except (OSError, ValueError):
        return False
