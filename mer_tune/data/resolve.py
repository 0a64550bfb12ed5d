"""Resolve a `--data` argument: a folder in the MERTools layout, or `synthetic:SCALE`."""

from __future__ import annotations

from pathlib import Path

from mer_tune.data import synthetic as synth
from mer_tune.data.layout import DataOptions, MERData
from mer_tune.data.pack import load
from mer_tune.errors import MerTuneError, UsageError

DEFAULT_DATA = "synthetic:small"


def _is_builtin(spec: str) -> bool:
    # Exactly: a folder named e.g. `synthetic-mine` is a path, not the built-in data.
    return spec == "synthetic" or spec.startswith("synthetic:")


def resolve(spec: str | None, opts: DataOptions = DataOptions()) -> MERData:
    """Load a dataset by spec; the built-in synthetic data is generated once and cached."""
    spec = spec or DEFAULT_DATA
    if _is_builtin(spec):
        _, _, rest = spec.partition(":")
        scale, _, seed = (rest or "small").partition(":")
        try:
            synth.scale_of(scale)
        except MerTuneError as err:
            raise UsageError(f"--data {spec}: {err}") from None
        if not (seed or "0").isdecimal():  # digits only: no sign, so no negative seed
            raise UsageError(f"--data {spec}: the seed must be a non-negative integer")
        return load(synth.builtin_dir(scale, int(seed or 0)), opts)
    path = Path(spec)
    if not path.is_dir():
        raise UsageError(
            f"--data {spec}: no such folder (or use synthetic:tiny|small|full|mer2025)"
        )
    return load(path, opts)


def describe(spec: str | None, opts: DataOptions, data: MERData) -> dict:
    """What a search records to find its data again from any directory: the spec (a
    folder made absolute), every data option (paths made absolute) and the fingerprint."""
    spec = spec or DEFAULT_DATA
    if not _is_builtin(spec):
        spec = str(Path(spec).resolve())

    def absolute(p: str | None) -> str | None:
        return str(Path(p).resolve()) if p and Path(p).exists() else p

    return {
        "spec": spec,
        "options": {
            "folders": dict(opts.folders),
            "classes": list(opts.classes),
            "labels": absolute(opts.labels),
            "test_names": absolute(opts.test_names),
            "trust_pickle": opts.trust_pickle,
        },
        "fingerprint": data.fingerprint,
    }


def reopen(recorded: dict, where: str) -> MERData:
    """Load the data a search recorded with `describe`; refuse (one line) when it is no
    longer the same data."""
    o = recorded["options"]
    opts = DataOptions(
        folders=dict(o["folders"]),
        classes=tuple(o["classes"]),
        labels=o["labels"],
        test_names=o["test_names"],
        trust_pickle=bool(o["trust_pickle"]),
    )
    data = resolve(recorded["spec"], opts)
    if data.fingerprint != recorded["fingerprint"]:
        raise MerTuneError(
            f"{where}: the data at {recorded['spec']} has changed since the search started "
            f"(fingerprint {data.fingerprint}, recorded {recorded['fingerprint']})"
        )
    return data
