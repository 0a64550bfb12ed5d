"""The local filesystem Tune saves a search's state through, with whole-file writes.

Tune writes its experiment and searcher state in a staging folder, then copies it into
the search folder (STORAGE/NAME/ray) in a background thread, over the old files. A search
killed in the middle of that copy (SIGKILL, out of memory, a lost machine) left a torn
file there, and `--resume` then failed on it ("Ran out of input"). Through this
filesystem every file Tune writes goes to a temporary name and is renamed over the old
one when complete, so the search folder always holds the last whole copy of each file.
A copy of the experiment state that is not whole JSON (read while Tune rewrote it) is
dropped. Each file whole, the three may still come from different steps: tune_state.py
brings them in line before a resume.
"""

from __future__ import annotations

import fnmatch
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs


class _WholeFile(io.FileIO):
    """A binary file written under a temporary name next to `path` (named as
    outputs.atomic_write names its own: `.NAME.*.tmp`, mode 0600 in the private search
    folder) and renamed to `path` on close. Not fsynced as outputs.fsync_replace does:
    Tune rewrites these files at every step, and the flushes cost `make run` about 4 s of
    the driver's CPU; a killed process loses nothing the kernel already holds."""

    def __init__(self, path: str):
        fd, tmp = tempfile.mkstemp(
            prefix=f".{Path(path).name}.", suffix=".tmp", dir=Path(path).parent
        )
        super().__init__(fd, "wb")
        self.tmp, self.path = Path(tmp), Path(path)

    def close(self) -> None:
        if not self.closed:
            super().close()
            if _torn(self.tmp, self.path.name):
                self.tmp.unlink()  # the previous whole copy stays; the next step saves again
                return
            os.replace(self.tmp, self.path)

    def __del__(self) -> None:  # dropped unclosed (a failed copy): never put in place
        if not self.closed:
            super().close()
            self.tmp.unlink(missing_ok=True)


def _torn(written: Path, name: str) -> bool:
    """Tune writes its experiment state over the old one in place in its staging folder,
    and the copy into the search folder may read it while it is half written: such a
    copy is not JSON. (The generator's and searcher's files are replaced whole there.)"""
    if not fnmatch.fnmatch(name, "experiment_state-*.json"):
        return False
    try:
        json.loads(written.read_bytes())
    except ValueError:
        return True
    return False


class WholeFileHandler(pafs.FileSystemHandler):
    """pyarrow's LocalFileSystem, except that new files appear whole or not at all."""

    def __init__(self) -> None:
        self.local = pafs.LocalFileSystem()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, WholeFileHandler)

    def __ne__(self, other: object) -> bool:
        return not self == other

    def get_type_name(self) -> str:
        return "mer-tune-whole-files"

    def normalize_path(self, path: str) -> str:
        return self.local.normalize_path(path)

    def get_file_info(self, paths: list[str]) -> list[pafs.FileInfo]:
        return self.local.get_file_info(paths)

    def get_file_info_selector(self, selector: pafs.FileSelector) -> list[pafs.FileInfo]:
        return self.local.get_file_info(selector)

    def create_dir(self, path: str, recursive: bool) -> None:
        self.local.create_dir(path, recursive=recursive)

    def delete_dir(self, path: str) -> None:
        self.local.delete_dir(path)

    def delete_dir_contents(self, path: str, missing_dir_ok: bool = False) -> None:
        self.local.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self) -> None:
        raise OSError("refusing to empty the root folder")

    def delete_file(self, path: str) -> None:
        self.local.delete_file(path)

    def move(self, src: str, dest: str) -> None:
        self.local.move(src, dest)

    def copy_file(self, src: str, dest: str) -> None:
        with (
            self.local.open_input_stream(src) as source,
            self.open_output_stream(dest, None) as out,
        ):
            while chunk := source.read(1 << 20):
                out.write(chunk)

    def open_input_stream(self, path: str) -> pa.NativeFile:
        return self.local.open_input_stream(path)

    def open_input_file(self, path: str) -> pa.NativeFile:
        return self.local.open_input_file(path)

    def open_output_stream(self, path: str, metadata: Any) -> pa.NativeFile:
        return pa.PythonFile(_WholeFile(path), mode="w")

    def open_append_stream(self, path: str, metadata: Any) -> pa.NativeFile:
        return self.local.open_append_stream(path, metadata=metadata)


def whole_file_filesystem() -> pafs.FileSystem:
    return pafs.PyFileSystem(WholeFileHandler())
