"""Built-in data with a known answer: presets of the synthetic generator whose best
settings lie away from the paper's values, so that a search has a gain to find.

`synthetic:SCALE+PRESET[:SEED]` (and `mer-tune data synth --scale SCALE+PRESET`) builds
the scale's data with the preset's changes; e.g. `synthetic:small+misleading-audio`. The gain
that each preset makes available was measured by scoring a grid of settings on the test
names' truth (benchmarks/scenario_grid.py; README, "Does a search pay?").
"""

from __future__ import annotations

import dataclasses
from typing import Any

from mer_tune.errors import MerTuneError

# Each preset's changes to the Scale it is applied to.
PRESETS: dict[str, dict[str, Any]] = {
    # On half the clips the audio expresses another class than the clip (laughter in a sad
    # scene, music), so the paper's largest voting weight (audio 0.7) trusts a head that
    # is confidently wrong there: the voting space has a gain to find. At 35% (until g4)
    # the gain no longer carried from one data seed to another (RESULTS.md).
    "misleading-audio": {"misleading_audio": 0.5},
}


def split(name: str) -> tuple[str, str | None]:
    """('small', 'misleading-audio') from 'small+misleading-audio'; ('small', None)
    from 'small'."""
    scale, plus, preset = name.partition("+")
    return scale, preset if plus else None


def apply(scale: Any, name: str, preset: str) -> Any:
    """The Scale `scale` with the changes of `preset`, or a one-line refusal naming it."""
    if preset not in PRESETS:
        valid = ", ".join(PRESETS)
        raise MerTuneError(f"unknown synthetic preset '{preset}' in '{name}'; valid: {valid}")
    return dataclasses.replace(scale, **PRESETS[preset])


def names(scales: list[str]) -> list[str]:
    """Every SCALE+PRESET name, for help texts and errors."""
    return [f"{s}+{p}" for s in scales for p in PRESETS]
