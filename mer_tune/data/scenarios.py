"""Built-in data with a known answer: presets of the synthetic generator whose best
settings lie away from the paper's values, so that a search has a gain to find.

`synthetic:SCALE+PRESET[:SEED]` (and `mer-tune data synth --scale SCALE+PRESET`) builds
the scale's data with the preset's changes; e.g. `synthetic:small+noisy-audio`. The gain
that each preset makes available was measured by scoring a grid of settings on the test
names' truth (benchmarks/scenario_grid.py; README, "Does a search pay?").
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from mer_tune.errors import MerTuneError


@dataclass(frozen=True)
class Preset:
    summary: str  # one line: what differs from the MER2024-like default, and what it favours
    changes: dict[str, Any]  # Scale fields


PRESETS = {
    "misleading-audio": Preset(
        "on 35% of clips the audio expresses another class than the clip (laughter in a "
        "sad scene, music), so the paper's largest voting weight (audio 0.7) trusts a "
        "head that is confidently wrong there: the voting space has a gain to find",
        {"misleading_audio": 0.35},
    ),
}


def split(name: str) -> tuple[str, str | None]:
    """('small', 'noisy-audio') from 'small+noisy-audio'; ('small', None) from 'small'."""
    scale, plus, preset = name.partition("+")
    return scale, preset if plus else None


def apply(scale: Any, name: str, preset: str) -> Any:
    """The Scale `scale` with the changes of `preset`, or a one-line refusal naming it."""
    if preset not in PRESETS:
        valid = ", ".join(PRESETS)
        raise MerTuneError(f"unknown synthetic preset '{preset}' in '{name}'; valid: {valid}")
    return dataclasses.replace(scale, **PRESETS[preset].changes)


def names(scales: list[str]) -> list[str]:
    """Every SCALE+PRESET name, for help texts and errors."""
    return [f"{s}+{p}" for s in scales for p in PRESETS]
