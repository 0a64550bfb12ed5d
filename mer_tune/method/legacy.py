"""Configs written in full by an earlier mer-tune (a search's base config, a
best_config.yaml, a run's config.yaml) keep the method they were run with.

The release that made the method as published the default added keys whose defaults
differ from what the earlier code did. A file that holds every key of the earlier
config and none of those is such a dump: its missing keys get the earlier forms, so a
resumed search or a rerun best config trains what its scores came from. A hand-written
partial config takes today's defaults.
"""

from __future__ import annotations

from typing import Any

# Keys added with the published defaults, and the form the earlier code had.
ADDED = {
    "self_training.init": "finetuned",
    "loss.supervised": "mean_heads",
    "model.invariant": "sum",
}
# Keys every earlier full dump holds (a sample from each section the change touched).
EARLIER = (
    "model.layers",
    "loss.temperature",
    "loss.learn_temperature",
    "loss.weighting",
    "loss.invariant_weight",
    "loss.finetune_contrastive",
    "noise.applied_to",
    "self_training.epochs",
    "self_training.confidence_weights",
    "eval.select_on",
)


def _get(values: dict[str, Any], dotted: str) -> tuple[bool, Any]:
    node: Any = values
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def is_earlier_dump(values: dict[str, Any]) -> bool:
    """A full config from before the published defaults: every EARLIER key, no ADDED key,
    and no loss.invariant or loss.temperature_init."""
    later = (*ADDED, "loss.invariant", "loss.temperature_init")
    return all(_get(values, k)[0] for k in EARLIER) and not any(_get(values, k)[0] for k in later)


def upgrade(values: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """(values with the earlier forms of the added keys, whether it was an earlier dump)."""
    if not isinstance(values, dict) or not is_earlier_dump(values):
        return values, False
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in values.items()}
    for dotted, value in ADDED.items():
        section, key = dotted.split(".")
        out[section][key] = value
    loss = out["loss"]
    # The invariant term was on whenever its weight was; a learned temperature started
    # at loss.temperature.
    on = (loss.get("invariant_weight") or 0) > 0
    loss["invariant"] = "ntxent" if on else "none"
    if not on:
        loss["invariant_weight"] = 0.0
    tau = loss.get("temperature")
    if isinstance(tau, int | float) and not isinstance(tau, bool):
        loss["temperature_init"] = min(max(float(tau), 0.01), 1.0)
    return out, True
