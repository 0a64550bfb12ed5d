"""Writing results without leaving anything half-written: temp name, then rename."""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from mer_tune.errors import MerTuneError, UsageError

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def _read_umask() -> int:
    """The process umask, read from /proc where Linux shows it (setting it to read it,
    the portable way, would briefly change it for every thread)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


UMASK = _read_umask()  # read once, at import: os.umask can only be read by setting it


def fsync_replace(tmp: Path, path: Path, mode: int = 0o666) -> None:
    """Give `tmp` the mode a plain open() would (mkstemp makes 0600), flush it to disk,
    and rename it over `path`: after a crash the file is either old or whole."""
    os.chmod(tmp, mode & ~UMASK)
    with open(tmp, "rb") as f:  # fsync needs no write access
        os.fsync(f.fileno())
    os.replace(tmp, path)
    with contextlib.suppress(OSError):  # the rename itself, where the platform allows
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(path: Path, write: Callable[[Path], None], mode: int = 0o666) -> None:
    """Call `write(tmp_path)`, then flush and rename the temporary file over `path`: the
    one way mer-tune writes a file. A failure leaves no temporary file (named
    `.NAME.*.tmp`); a killed process's leftovers are swept by whoever owns the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        fsync_replace(Path(tmp), path, mode)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_bytes(path: Path, blob: bytes) -> None:
    atomic_write(path, lambda p: p.write_bytes(blob))


def write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda p: p.write_text(text))


def write_json(path: Path, obj: object) -> None:
    write_text(path, json.dumps(obj, indent=2, default=float) + "\n")


def ensure_writable(folder: Path) -> Path:
    """Create `folder` if needed and prove it is writable, before any work starts."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".probe-"):
            pass
    except OSError as err:
        raise MerTuneError(f"{folder}: cannot write there ({err.strerror})") from None
    return folder


def check_folder_target(folder: Path, option: str) -> None:
    """Refuse, creating nothing, a folder that cannot be written in or created (a file
    in its place or on its path, a folder not writable): one line before any work."""
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir():
        raise UsageError(f"{option} {folder}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise MerTuneError(f"{option} {folder}: cannot write in {existing}")


@contextlib.contextmanager
def no_empty_folder_left(folder: Path) -> Iterator[None]:
    """If the block fails, remove `folder` and each parent of it that did not exist
    before, where they are still empty: a failed command leaves no empty folder behind.
    A folder that existed before the block is never touched."""
    missing = [p for p in (folder, *folder.parents) if not p.exists()]
    try:
        yield
    except BaseException:
        for path in missing:  # the deepest first
            try:
                path.rmdir()
            except OSError:  # not empty, or gone: it and its parents stay
                break
        raise


def _shown(name: str) -> str:
    """A name as an error quotes it: a pasted paragraph is not echoed whole."""
    return name if len(name or "") <= 80 else f"{name[:60]}... ({len(name)} characters)"


def plain_name(name: str, option: str) -> str:
    """A search name as given to --name, --resume, report, confirm or cache: letters,
    digits, '.', '_' and '-', never a path (no '/', no '..'), so it cannot point outside
    the storage folder."""
    if not _NAME.fullmatch(name or "") or ".." in name:
        raise UsageError(
            f"{option} {_shown(name)!r}: a search name is letters, digits, '.', '_' and '-', "
            "starting with a letter or digit (no '/', no '..', at most 128 characters)"
        )
    return name


def make_private_dir(path: Path) -> None:
    """Create `path` atomically with mode 0700 (FileExistsError if it exists): a search
    folder holds pickled Ray and Optuna state that resuming unpickles, so only its owner
    may write there."""
    os.mkdir(path, 0o700)
    os.chmod(path, 0o700)  # whatever the umask


def write_secret(path: Path, text: str) -> None:
    """A file only its owner may read (mode 0600; mkstemp makes it so from the start)."""
    atomic_write(path, lambda p: p.write_text(text), mode=0o600)
