"""`--record`: append a benchmark's printed numbers to benchmarks/RESULTS.md, with the
date, the machine and the exact command, under "Recorded runs" at the end of the file.
The curated tables above that heading are written by hand from these records.

Every benchmark ends with `run(main)`, which takes `--record` off the command line
before the script's own argument parser sees it."""

from __future__ import annotations

import contextlib
import datetime
import io
import os
import platform
import shlex
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")
HEADING = "## Recorded runs"


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    parts = [f"{cpu}, {os.cpu_count()} cores"]
    try:
        import torch

        if torch.cuda.is_available():
            parts.append(torch.cuda.get_device_name())
        else:
            parts.append("no GPU")
        parts.append(f"torch {torch.__version__}")
    except ImportError:
        pass
    parts.append(f"Python {platform.python_version()}")
    return "; ".join(parts)


class _Tee(io.TextIOBase):
    def __init__(self, *streams: io.TextIOBase):
        self.streams = streams

    def write(self, text: str) -> int:
        for s in self.streams:
            s.write(text)
        return len(text)

    def flush(self) -> None:
        for s in self.streams:
            s.flush()


@contextlib.contextmanager
def recording(enabled: bool, results: Path = RESULTS) -> Iterator[None]:
    """Print as usual; when enabled, also append what was printed to RESULTS.md once the
    benchmark has finished (nothing is written for a run that fails)."""
    if not enabled:
        yield
        return
    buffer = io.StringIO()
    started = datetime.datetime.now(datetime.UTC)
    real = sys.stdout
    sys.stdout = _Tee(real, buffer)
    try:
        yield
    finally:
        sys.stdout = real
    argv = sys.argv
    command = "python " + shlex.join([os.path.relpath(argv[0])] + argv[1:])
    text = results.read_text() if results.exists() else "# Benchmark results\n"
    if HEADING not in text:
        text = text.rstrip("\n") + f"\n\n{HEADING}\n"
    entry = (
        f"\n### {Path(argv[0]).stem}, {started:%Y-%m-%d %H:%M} UTC\n\n"
        f"Machine: {machine()}. Command: `{command}`\n\n"
        f"```\n{buffer.getvalue().rstrip()}\n```\n"
    )
    tmp = results.with_suffix(".md.tmp")
    tmp.write_text(text.rstrip("\n") + "\n" + entry)
    os.replace(tmp, results)  # a reader never sees half a file


def run(main: Callable[[], None]) -> None:
    """Run a benchmark's main(); with `--record` on the command line, record its output."""
    enabled = "--record" in sys.argv[1:]
    sys.argv = [a for a in sys.argv if a != "--record"]
    with recording(enabled):
        main()
