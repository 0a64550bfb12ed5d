"""glibc's malloc settings for the processes that train (benchmarks/RESULTS.md, "Memory"
and "The CPU step"). A module of its own, free of torch, so that the CLI can set them
before anything else without importing torch for a command that trains nothing.

Left dynamic, glibc raises its mmap threshold after the first large frees, and the
MB-sized feature batches of an inference pass then fragment the heap: so inference maps
every allocation above 1 MiB on its own. A training step instead reuses the same few 3 to
6 MB NT-Xent matrices: mapped on their own, their pages would fault in and be zeroed again
every step (a quarter of a CPU step), so training keeps allocations below 8 MiB in the
heap. Fixing the mmap threshold also fixes the trim threshold at its 128 KiB default,
which would hand the heap's top back to the system after every step: 64 MiB keeps a
step's working set.
"""

from __future__ import annotations

import contextlib
import ctypes
from collections.abc import Iterator

MMAP_THRESHOLD = 8 << 20
INFERENCE_MMAP_THRESHOLD = 1 << 20
TRIM_THRESHOLD = 64 << 20
_M_MMAP_THRESHOLD, _M_TRIM_THRESHOLD = -3, -1  # mallopt's parameter numbers
_libc: ctypes.CDLL | None = None
_training_mmap_threshold = MMAP_THRESHOLD  # what tune_malloc set, restored after inference


def tune_malloc(mmap_threshold: int = MMAP_THRESHOLD, trim_threshold: int = TRIM_THRESHOLD) -> None:
    """Fix glibc's mmap and trim thresholds (see above). Called by the entry points that
    train: the CLI, a trial, a retraining, the batched scorer."""
    global _libc, _training_mmap_threshold
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to tune
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(_M_MMAP_THRESHOLD, mmap_threshold)
        libc.mallopt(_M_TRIM_THRESHOLD, trim_threshold)
        _libc, _training_mmap_threshold = libc, mmap_threshold


@contextlib.contextmanager
def inference_malloc() -> Iterator[None]:
    """Inference batches mapped on their own (see above), where tune_malloc was called.
    Training processes call predict from one thread, so there is no nesting to track."""
    if _libc is None:
        yield
        return
    _libc.mallopt(_M_MMAP_THRESHOLD, min(INFERENCE_MMAP_THRESHOLD, _training_mmap_threshold))
    try:
        yield
    finally:
        _libc.mallopt(_M_MMAP_THRESHOLD, _training_mmap_threshold)
