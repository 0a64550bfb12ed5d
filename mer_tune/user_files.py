"""Files a user names, checked before they are read: they exist, are regular files (not
a folder, a device such as /dev/zero, a pipe, or a symlink that loops or leads nowhere)
and are no larger than their kind of file can be. Each problem is one line naming the
file."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from mer_tune.errors import MerTuneError, UsageError


def check_file(path: Path, what: str, limit: int, error: type[MerTuneError] = UsageError) -> int:
    """The size of the regular file `path` (a `what` file of at most `limit` bytes)."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            raise error(f"{path}: a symlink to nothing (its target is missing)") from None
        raise error(f"{path}: {what} file not found") from None
    except OSError as err:
        raise error(f"{path}: cannot read {what} ({err.strerror})") from None
    if stat.S_ISDIR(info.st_mode):
        raise error(f"{path}: is a folder, not a {what} file")
    if not stat.S_ISREG(info.st_mode):
        raise error(f"{path}: not a regular file (a device or pipe); give a {what} file")
    if info.st_size > limit:
        raise error(f"{path}: {info.st_size} bytes; a {what} file holds at most {limit}")
    return info.st_size


def read_text(path: Path, what: str, limit: int, error: type[MerTuneError] = UsageError) -> str:
    """The UTF-8 text of a checked file, read no further than `limit` bytes."""
    check_file(path, what, limit, error)
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except OSError as err:
        raise error(f"{path}: cannot read {what} ({err.strerror})") from None
    if len(data) > limit:  # it grew since it was checked
        raise error(f"{path}: over {limit} bytes; a {what} file holds at most {limit}")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise error(f"{path}: cannot read {what} (not a UTF-8 text file)") from None
