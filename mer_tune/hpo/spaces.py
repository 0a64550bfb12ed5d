"""Search spaces: YAML files in Optuna's short distribution form, keys are config paths.

description: Per-class pseudo-label confidence thresholds
params:
  self_training.thresholds.worried: {type: float, low: 0.5, high: 1.0}
  optim.lr: {type: float, low: 1.0e-4, high: 3.0e-3, log: true}
  model.hidden: {type: categorical, choices: [64, 128, 256]}
  noise.kind: {type: categorical, choices: [ddpm, gaussian]}
  noise.gaussian_std: {type: float, low: 0.1, high: 2.0, when: {noise.kind: gaussian}}
fixed:                      # optional: other values pinned for this search
  finetune.epochs: 10

`when` makes a parameter conditional: it is suggested only in trials where the named
parameter (searched above it) took one of the given values; elsewhere the config keeps
its value. A condition on a parameter this space does not search is settled once,
against the base config.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna

from mer_tune import user_yaml
from mer_tune.errors import MerTuneError, UsageError
from mer_tune.method.config import (
    PER_CLASS,
    Config,
    build_config,
    get_path,
    valid_paths,
    with_overrides,
)


def _shipped_spaces() -> Path:
    """search_spaces/ inside the package in an installed wheel; beside it in a checkout
    (never a folder of that name that another package put beside an installed one)."""
    package = Path(__file__).resolve().parent.parent  # mer_tune/
    inside = package / "search_spaces"
    return inside if inside.is_dir() else package.parent / "search_spaces"


SPACES_DIR = _shipped_spaces()
_KEYS = {
    "float": {"type", "low", "high", "log", "step", "when"},
    "int": {"type", "low", "high", "log", "step", "when"},
    "categorical": {"type", "choices", "when"},
}
MAX_CHECKED = 1000  # an int range with more values has only its ends checked


def unused(value: Any) -> bool:
    """A conditional parameter a trial did not use: absent, None, or NaN in a table."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def plain_value(value: Any) -> Any:
    """A numpy scalar from a results table back to a plain Python value."""
    return value.item() if hasattr(value, "item") else value


def trial_config(base: Config, values: dict[str, Any]) -> Config:
    """The config a trial runs: the base config with the values suggested for it (numpy
    scalars from a results table made plain first; a conditional parameter the trial did
    not use keeps the base value). The one place this is built."""
    plain = {k: plain_value(v) for k, v in values.items()}
    return with_overrides(base, {k: v for k, v in plain.items() if not unused(v)})


@dataclass
class Space:
    name: str
    source: str  # the file it came from, or what built it: named in every error
    description: str
    params: dict[str, optuna.distributions.BaseDistribution]
    fixed: dict[str, Any] = field(default_factory=dict)
    spec: dict[str, Any] = field(default_factory=dict)  # params in the YAML's short form
    pattern: dict[str, str] = field(default_factory=dict)  # param -> its key in spec (a.b.*)
    # param -> {searched param: values}: suggested only when that one took one of them
    conditions: dict[str, dict[str, list]] = field(default_factory=dict)

    def active(self, key: str, values: dict[str, Any]) -> bool:
        """Whether a trial with the suggested `values` so far uses parameter `key`."""
        return all(values.get(k) in allowed for k, allowed in self.conditions.get(key, {}).items())

    def values_of(self, row: dict[str, Any]) -> dict[str, Any]:
        """The values a results row's trial used, as plain Python values (a conditional
        parameter it did not use is left out, as Optuna does)."""
        return {k: plain_value(row[k]) for k in self.params if not unused(row.get(k))}

    def base_config(self, base: Config | None = None) -> Config:
        return with_overrides(base or build_config(), self.fixed, source=f"{self.source}: fixed")

    def to_dict(self) -> dict[str, Any]:
        """The space in the file format: load_space reads back what this writes."""
        return {"description": self.description, "params": self.spec, "fixed": self.fixed}

    def subspace(self, keys: list[str], name: str, fixed: dict[str, Any]) -> Space:
        """The space of `keys` alone, with other values pinned by `fixed`."""
        spec = {k: self.spec[self.pattern.get(k, k)] for k in keys}
        raw = {"description": f"{self.name}, {name}", "params": spec}
        return space_from_dict(raw | {"fixed": fixed}, None, f"{self.name}-{name}", self.source)

    def defaults(self, base: Config) -> dict[str, Any]:
        """The base config's value of every searched parameter (the first point to try),
        clipped into the space's range."""
        point: dict[str, Any] = {}
        for key, dist in self.params.items():
            if not self.active(key, point):
                continue
            value = value_at(base, key)
            if isinstance(dist, optuna.distributions.CategoricalDistribution):
                value = value if value in dist.choices else dist.choices[0]
            else:
                value = min(max(value, dist.low), dist.high)
            point[key] = value
        return point

    def describe(self) -> list[tuple[str, str]]:
        return [(key, describe_distribution(d)) for key, d in self.params.items()]


def value_at(cfg: Config, key: str) -> Any:
    """A config value by dotted path; a class without its own threshold has the default."""
    prefix, _, cls = key.rpartition(".")
    if prefix in PER_CLASS:
        return cfg.class_value(prefix, cls)
    return get_path(cfg, key)


def _expand(key: str, base: Config, where: str) -> list[str]:
    """`a.b.*` names every key of the mapping a.b: every class for per-class values
    (thresholds, decision offsets: whatever classes the data has), every head for the
    voting weights."""
    if not key.endswith(".*"):
        return [key]
    prefix = key[:-2]
    if prefix in PER_CLASS:
        names = list(base.data.classes)
    else:
        try:
            value = get_path(base, prefix)
        except KeyError:
            value = None
        if not isinstance(value, dict):
            raise UsageError(f"{where}: '{prefix}' is not a mapping; '.*' expands mappings only")
        names = list(value)
    return [f"{prefix}.{n}" for n in names]


def describe_distribution(d: optuna.distributions.BaseDistribution) -> str:
    if isinstance(d, optuna.distributions.CategoricalDistribution):
        return "one of " + ", ".join(str(c) for c in d.choices)
    kind = "int" if isinstance(d, optuna.distributions.IntDistribution) else "float"
    scale = ", log" if d.log else ""
    step = f", step {d.step}" if getattr(d, "step", None) else ""
    return f"{kind} [{d.low:g}, {d.high:g}]{scale}{step}"


def available() -> list[str]:
    return sorted(p.stem for p in SPACES_DIR.glob("*.yaml"))


def resolve_path(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists() or path.is_symlink():
        if not path.exists() and not path.is_symlink():
            raise UsageError(f"{path}: search space file not found")
        if path.is_dir():
            raise UsageError(f"{path}: is a folder; --space names a shipped space or a YAML file")
        return path  # anything else but a regular file is refused when read (user_yaml)
    candidate = SPACES_DIR / f"{name_or_path}.yaml"
    if not candidate.exists():
        raise UsageError(
            f"unknown search space '{name_or_path}'; available: {', '.join(available())} "
            "(or the path of a .yaml file)"
        )
    return candidate


def load_space(name_or_path: str | Space, base: Config | None = None) -> Space:
    """Read and validate a space file (or revalidate a Space against `base`); every
    error names the file and the key."""
    if isinstance(name_or_path, Space):
        sp = name_or_path
        return space_from_dict(sp.to_dict(), base, sp.name, sp.source)
    path = resolve_path(name_or_path)
    raw = user_yaml.read_file(path, "search space")
    return space_from_dict(raw, base, path.stem, str(path))


def space_from_dict(raw: Any, base: Config | None, name: str, path: str) -> Space:
    """A validated Space from the file format's mapping; errors name `path`."""
    if not isinstance(raw, dict) or not isinstance(raw.get("params"), dict) or not raw["params"]:
        raise UsageError(f"{path}: expected a mapping with a non-empty 'params' block")
    unknown = sorted(set(raw) - {"description", "params", "fixed"})
    if unknown:
        raise UsageError(
            f"{path}: unknown top-level key '{unknown[0]}'; valid: description, params, fixed"
        )
    fixed = raw.get("fixed") or {}
    if not isinstance(fixed, dict):
        raise UsageError(f"{path}: 'fixed' must be a mapping of config paths to values")
    try:
        base_cfg = with_overrides(base or build_config(), fixed, source=f"{path}: fixed")
    except MerTuneError as err:
        raise UsageError(str(err)) from None
    paths = valid_paths(base_cfg)
    params, origin, conditions = {}, {}, {}
    for pattern, spec in raw["params"].items():
        for key in _expand(str(pattern), base_cfg, f"{path}: params.{pattern}"):
            where = f"{path}: params.{key}"
            if key not in paths:
                raise UsageError(f"{where}: unknown config key; valid keys: {', '.join(paths)}")
            dist = _distribution(spec, where)
            _check_bounds(base_cfg, key, dist, where)
            when = _condition(spec.get("when"), params, base_cfg, paths, where)
            if when is None:
                continue  # settled against the base config: never used
            origin[key] = str(pattern)
            params[key] = dist
            if when:
                conditions[key] = when
    for key in params:
        _check_range(base_cfg, params, key, f"{path}: params.{key}")
    spec = dict(raw["params"])
    description = str(raw.get("description") or "")
    return Space(name, path, description, params, fixed, spec, origin, conditions)


def _condition(
    when: Any, params: dict, base: Config, paths: list[str], where: str
) -> dict[str, list] | None:
    """A parameter's `when` as {searched param: allowed values}; {} when it always
    applies; None when it can never apply (a condition on an unsearched key the base
    config does not meet)."""
    if when is None:
        return {}
    if not isinstance(when, dict) or not when:
        raise UsageError(f"{where}: 'when' must map a parameter to a value or a list of values")
    out: dict[str, list] = {}
    for key, allowed in when.items():
        allowed = list(allowed) if isinstance(allowed, list) else [allowed]
        if key in params:
            dist = params[key]
            choices = getattr(dist, "choices", None)
            if choices is None:
                raise UsageError(f"{where}: 'when' names {key}, which is not categorical")
            unknown = [v for v in allowed if v not in choices]
            if unknown:
                raise UsageError(
                    f"{where}: 'when' value {unknown[0]!r} is not a choice of {key} "
                    f"({', '.join(map(str, choices))})"
                )
            out[key] = allowed
        elif key in paths:
            if value_at(base, key) not in allowed:
                return None
        else:
            raise UsageError(
                f"{where}: 'when' names {key}, which is neither a parameter searched above "
                "it nor a config key"
            )
    return out


def _distribution(spec: Any, where: str) -> optuna.distributions.BaseDistribution:
    if not isinstance(spec, dict) or spec.get("type") not in _KEYS:
        raise UsageError(f"{where}: expected {{type: float|int|categorical, ...}}, got {spec!r}")
    kind = spec["type"]
    extra = sorted(set(spec) - _KEYS[kind])
    if extra:
        raise UsageError(
            f"{where}: unknown field '{extra[0]}' for type {kind}; valid: {', '.join(sorted(_KEYS[kind]))}"
        )
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise UsageError(f"{where}: 'choices' must be a non-empty list")
        return optuna.distributions.CategoricalDistribution(choices)
    for bound in ("low", "high"):
        value = spec.get(bound)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise UsageError(f"{where}: '{bound}' must be a number, got {value!r}")
        if isinstance(value, float) and not math.isfinite(value):
            raise UsageError(f"{where}: '{bound}' must be finite, got {value!r}")
    low, high, log, step = spec["low"], spec["high"], bool(spec.get("log", False)), spec.get("step")
    if step is not None and (
        isinstance(step, bool) or not isinstance(step, int | float) or not 0 < step < math.inf
    ):
        raise UsageError(f"{where}: 'step' must be a positive number, got {step!r}")
    if kind == "int" and step is not None and not float(step).is_integer():
        raise UsageError(f"{where}: an int 'step' must be a whole number, got {step!r}")
    if low > high:
        raise UsageError(f"{where}: low ({low}) > high ({high})")
    if log and low <= 0:
        raise UsageError(f"{where}: a log scale needs low > 0 (got {low})")
    if log and step is not None:
        raise UsageError(f"{where}: 'step' cannot be combined with a log scale")
    if kind == "int":
        if not (float(low).is_integer() and float(high).is_integer()):
            raise UsageError(f"{where}: int bounds must be whole numbers")
        return optuna.distributions.IntDistribution(
            int(low), int(high), log=log, step=int(step or 1)
        )
    return optuna.distributions.FloatDistribution(float(low), float(high), log=log, step=step)


def _check_bounds(
    base: Config, key: str, dist: optuna.distributions.BaseDistribution, where: str
) -> None:
    """Every choice, and both ends of a range, must make a valid config."""
    if isinstance(dist, optuna.distributions.CategoricalDistribution):
        values = list(dist.choices)
    else:
        values = [dist.low, dist.high]
    for value in values:
        problem = _problem(base, {key: value})
        if problem:
            raise UsageError(f"{where}: value {value!r} is not allowed ({problem})")


def _check_range(base: Config, params: dict, key: str, where: str) -> None:
    """Every value between the ends of a small int range must make a valid config too:
    heads 1 to 8 passes at both ends with hidden 128, and 3, 5, 6 and 7 do not."""
    values = _values(params[key])
    if not isinstance(params[key], optuna.distributions.IntDistribution) or values is None:
        return
    for value in values[1:-1]:
        problem = _problem(base, {key: value})
        if problem and not _fixable(base, params, key, value, problem):
            raise UsageError(f"{where}: value {value!r} is not allowed ({problem})")


def _fixable(base: Config, params: dict, key: str, value: Any, problem: str) -> bool:
    """Whether a searched key that `problem` names can make `value` valid: heads 3 is
    fine in the trials that draw hidden 96. One with too many values to try (a float or
    large int range) is given the benefit of the doubt."""
    for other, dist in params.items():
        if other == key or other not in problem:
            continue
        values = _values(dist)
        if values is None or any(not _problem(base, {key: value, other: v}) for v in values):
            return True
    return False


def _values(dist: optuna.distributions.BaseDistribution) -> list | None:
    """Every value a distribution can give; None for a float or large int range."""
    if isinstance(dist, optuna.distributions.CategoricalDistribution):
        return list(dist.choices)
    if isinstance(dist, optuna.distributions.IntDistribution):
        values = range(dist.low, dist.high + 1, dist.step)
        return list(values) if len(values) <= MAX_CHECKED else None
    return None


def _problem(base: Config, values: dict[str, Any]) -> str | None:
    """Why the base config with `values` is not a valid config; None when it is."""
    try:
        with_overrides(base, values)
    except MerTuneError as err:
        return str(err)
    return None
