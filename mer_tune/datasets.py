"""Resolve a `--data` argument: a folder in the MERTools layout, or `synthetic:SCALE`."""

from __future__ import annotations

from pathlib import Path

from . import synth
from .data import DataOptions, MERData, load
from .errors import UsageError

DEFAULT_DATA = "synthetic:small"


def resolve(spec: str | None, opts: DataOptions = DataOptions()) -> MERData:
    """Load a dataset by spec; the built-in synthetic data is generated once and cached."""
    spec = spec or DEFAULT_DATA
    if spec.startswith("synthetic"):
        _, _, rest = spec.partition(":")
        scale, _, seed = (rest or "small").partition(":")
        if scale not in synth.SCALES:
            raise UsageError(
                f"--data {spec}: unknown scale '{scale}'; valid: {', '.join(synth.SCALES)}"
            )
        try:
            seed_value = int(seed or 0)
        except ValueError:
            raise UsageError(f"--data {spec}: the seed must be an integer") from None
        return load(synth.builtin_dir(scale, seed_value), opts)
    path = Path(spec)
    if not path.is_dir():
        raise UsageError(f"--data {spec}: no such folder (or use synthetic:tiny|small|full)")
    return load(path, opts)
