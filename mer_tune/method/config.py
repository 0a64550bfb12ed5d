"""The typed config of one trial, with the paper's values as defaults.

Every knob a search touches is a field reachable by a dotted path, e.g.
``self_training.thresholds.worried`` or ``voting.weights.fusion``. Building a config
validates it; unknown keys are rejected with the list of valid ones.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    BaseModel,
    Field,
    ValidationError,
    model_validator,
)

from mer_tune import user_yaml
from mer_tune.errors import UsageError
from mer_tune.method import legacy
from mer_tune.method.sections import (
    HEADS,
    MAX_OFFSET,
    MAX_TAU,
    MIN_TAU,
    PAPER_THRESHOLDS,
    PAPER_VOTE_WEIGHTS,
    PER_CLASS,
    SEED_LIMIT,
    DataConfig,
    DecisionConfig,
    EvalConfig,
    FinetuneConfig,
    LossConfig,
    ModelConfig,
    NoiseConfig,
    OptimConfig,
    OversampleConfig,
    PerModality,
    PretrainConfig,
    SelfTrainingConfig,
    VotingConfig,
    _Strict,
)

# The sections are part of this module's interface: code imports them from here.
__all__ = [
    "HEADS",
    "MAX_OFFSET",
    "MAX_TAU",
    "MIN_TAU",
    "PAPER_THRESHOLDS",
    "PAPER_VOTE_WEIGHTS",
    "PER_CLASS",
    "SEED_LIMIT",
    "DataConfig",
    "DecisionConfig",
    "EvalConfig",
    "FinetuneConfig",
    "LossConfig",
    "ModelConfig",
    "NoiseConfig",
    "OptimConfig",
    "OversampleConfig",
    "PerModality",
    "PretrainConfig",
    "SelfTrainingConfig",
    "VotingConfig",
]


class Config(_Strict):
    data: DataConfig = Field(default_factory=DataConfig)
    oversample: OversampleConfig = Field(default_factory=OversampleConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    noise: NoiseConfig = Field(default_factory=NoiseConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    pretrain: PretrainConfig = Field(default_factory=PretrainConfig)
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)
    self_training: SelfTrainingConfig = Field(default_factory=SelfTrainingConfig)
    voting: VotingConfig = Field(default_factory=VotingConfig)
    decision: DecisionConfig = Field(default_factory=DecisionConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    seed: int = Field(
        0, ge=0, lt=SEED_LIMIT, description="seed of model init, batches, noise and oversampling"
    )

    @model_validator(mode="after")
    def _per_class_keys(self) -> Config:
        # The paper's values are for MER2024's six classes: with another class list they
        # apply to the classes it has, and the others take default_threshold.
        classes = set(self.data.classes)
        given = self.self_training.thresholds
        kept = {k: v for k, v in given.items() if k in classes or PAPER_THRESHOLDS.get(k) != v}
        if kept != given:
            self.self_training.thresholds = kept
        unknown = sorted(set(kept) - classes)
        if unknown:
            raise ValueError(
                f"self_training.thresholds.{unknown[0]} is not a class; "
                f"valid: {', '.join(self.data.classes)}"
            )
        unknown = sorted(set(self.decision.offsets) - classes)
        if unknown:
            raise ValueError(
                f"decision.offsets.{unknown[0]} is not a class; "
                f"valid: {', '.join(self.data.classes)}"
            )
        return self

    def offset_of(self, cls: str) -> float:
        return self.decision.offsets.get(cls, 0.0)

    def class_value(self, prefix: str, cls: str) -> float:
        """The value of a per-class key (PER_CLASS) for `cls`, its default if unnamed."""
        return self.threshold_of(cls) if prefix == PER_CLASS[0] else self.offset_of(cls)

    def retrain_epochs(self) -> int:
        """Epochs of a self-training round: its own, or the finetuning schedule's."""
        return self.self_training.epochs or self.finetune.epochs

    def threshold_of(self, cls: str) -> float:
        return self.self_training.thresholds.get(cls, self.self_training.default_threshold)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="python")

    def to_yaml(self) -> str:
        return user_yaml.dump(self.to_dict(), sort_keys=False)


# ---------------------------------------------------------------- building and paths


def _format_error(err: ValidationError, source: str) -> str:
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"])
    where = f"{source}: " if source else ""
    if first["type"] == "extra_forbidden":
        parent = _model_at(first["loc"][:-1])
        valid = ", ".join(parent.model_fields) if parent else ""
        return f"{where}unknown config key '{loc}'; valid keys here: {valid}"
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "bool_as_number":  # the key of the item in a mapping or list too
        inner = first["ctx"]["inner"]
        return f"{where}config key '{loc}{'' if inner is None else f'.{inner}'}' {msg}"
    if first["type"] == "value_error":
        return f"{where}{msg}"
    return f"{where}config key '{loc}': {msg} (got {user_yaml.excerpt(first.get('input'))})"


def _model_at(loc: tuple) -> type[BaseModel] | None:
    model: type[BaseModel] = Config
    for part in loc:
        field = model.model_fields.get(str(part))
        if field is None or not (
            isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)
        ):
            return None
        model = field.annotation
    return model


def build_config(values: dict[str, Any] | None = None, source: str = "") -> Config:
    """Build and validate a Config from a nested dict; raise UsageError on bad input."""
    try:
        return Config.model_validate(values or {})
    except ValidationError as err:
        raise UsageError(_format_error(err, source)) from None


def _shipped_configs() -> Path:
    """configs/ inside the package in an installed wheel; beside it in a checkout (never
    a folder of that name that another package put beside an installed one)."""
    package = Path(__file__).resolve().parent.parent  # mer_tune/
    inside = package / "configs"
    return inside if inside.is_dir() else package.parent / "configs"


CONFIGS_DIR = _shipped_configs()


def shipped_configs() -> list[str]:
    """The names `--config` takes besides a path, e.g. 'paper'."""
    return sorted(p.stem for p in CONFIGS_DIR.glob("*.yaml"))


def resolve_config(name_or_path: str | Path) -> Path:
    """A config file: the path when it exists (a path wins over a name), else the shipped
    config of that name; UsageError naming the shipped ones otherwise."""
    if not str(name_or_path).strip():
        raise UsageError("--config '': give a config file or a shipped config's name")
    path = Path(name_or_path)
    if path.exists() or path.is_symlink():  # a broken link or a loop: user_yaml says which
        if path.is_dir():
            raise UsageError(f"{path}: is a folder; --config names a shipped config or a YAML file")
        return path
    name = str(name_or_path)
    if name in shipped_configs():
        return CONFIGS_DIR / f"{name}.yaml"
    if path.suffix in (".yaml", ".yml") or "/" in name:
        raise UsageError(f"{path}: config file not found")
    raise UsageError(
        f"unknown config '{name}'; shipped: {', '.join(shipped_configs())} "
        "(or the path of a YAML file)"
    )


def load_config(path: str | Path) -> Config:
    """Read a config file, or a shipped config by name (`resolve_config`)."""
    path = resolve_config(path)
    values = user_yaml.read_file(path, "config")
    if values is not None and not isinstance(values, dict):
        raise UsageError(f"{path}: a config file must be a mapping of keys to values")
    values, _ = legacy.upgrade(values)  # a full config of an earlier release keeps its method
    return build_config(values, source=str(path))


def valid_paths(cfg: Config | None = None) -> list[str]:
    """Every dotted path of a leaf value, e.g. 'voting.weights.fusion'."""
    cfg = cfg or Config()
    out: list[str] = []

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        else:
            out.append(prefix)

    walk("", cfg.to_dict())
    # Per-class values may be set for every class, named or not.
    for prefix in PER_CLASS:
        for cls in cfg.data.classes:
            path = f"{prefix}.{cls}"
            if path not in out:
                out.append(path)
    return out


def set_path(values: dict[str, Any], path: str, value: Any) -> None:
    node = values
    parts = path.split(".")
    for part in parts[:-1]:
        nxt = node.get(part)
        if not isinstance(nxt, dict):
            nxt = {}
            node[part] = nxt
        node = nxt
    node[parts[-1]] = value


def get_path(cfg: Config, path: str) -> Any:
    """The value at a dotted path; a per-class key (PER_CLASS) the config leaves unnamed
    reads its class's default (an offset of 0, the default threshold)."""
    prefix, _, cls = path.rpartition(".")
    if prefix in PER_CLASS:
        return cfg.class_value(prefix, cls)
    node: Any = cfg.to_dict()
    for part in path.split("."):
        node = node[part]
    return node


def with_overrides(cfg: Config, overrides: dict[str, Any], source: str = "") -> Config:
    """Return a new Config with dotted-path overrides applied and validated."""
    values = copy.deepcopy(cfg.to_dict())
    for path, value in overrides.items():
        _check_path(cfg, path, source)
        set_path(values, path, value)
    return build_config(values, source=source)


def _check_path(cfg: Config, path: str, source: str) -> None:
    paths = valid_paths(cfg)
    if path in paths or any(p.startswith(path + ".") for p in paths):
        return
    # A class list changed in the same overrides may make new per-class keys valid.
    if path.startswith(tuple(f"{p}." for p in PER_CLASS)) or path == "data.classes":
        return
    where = f"{source}: " if source else ""
    parent = path.rpartition(".")[0]
    siblings = [p for p in paths if p.rpartition(".")[0] == parent] or paths
    if parent in paths:
        raise UsageError(f"{where}unknown config key '{path}': {parent} is a value, not a section")
    if not parent:  # a top-level key: the sections, not only the one top-level value
        siblings = sorted({p if "." not in p else p.split(".")[0] + ".*" for p in paths})
    raise UsageError(f"{where}unknown config key '{path}'; valid keys: {', '.join(siblings)}")


def parse_set_options(items: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """Parse ``key=value`` strings; values are YAML scalars (numbers, bools, lists)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        shown = user_yaml.excerpt(item)
        if not sep or not key.strip():
            raise UsageError(f"--set {shown}: expected key=value, e.g. optim.lr=1e-4")
        try:
            out[key.strip()] = user_yaml.parse(raw)
        except user_yaml.InputError as err:
            raise UsageError(f"--set {shown}: {err}") from None
        except yaml.YAMLError:
            raise UsageError(
                f"--set {shown}: cannot parse the value {user_yaml.excerpt(raw)}"
            ) from None
    return out


def describe(cfg: Config | None = None) -> list[tuple[str, Any, str]]:
    """(dotted key, value, description) of every leaf of the config; a per-class or
    per-head mapping gives one row per key."""
    cfg = cfg or Config()
    rows: list[tuple[str, Any, str]] = []

    def walk(model: BaseModel, prefix: str) -> None:
        for name, info in type(model).model_fields.items():
            value = getattr(model, name)
            path = f"{prefix}{name}"
            if isinstance(value, BaseModel):
                walk(value, path + ".")
            elif isinstance(value, dict):
                rows.extend((f"{path}.{k}", v, info.description or "") for k, v in value.items())
            else:
                rows.append((path, value, info.description or ""))

    walk(cfg, "")
    # A per-class mapping has a value for every class, named in it or not.
    named = {key for key, _, _ in rows}
    for prefix in PER_CLASS:
        section, field = prefix.split(".")
        text = type(getattr(cfg, section)).model_fields[field].description or ""
        for cls in cfg.data.classes:
            if f"{prefix}.{cls}" not in named:
                rows.append((f"{prefix}.{cls}", cfg.class_value(prefix, cls), text))
    return rows


def commented_yaml(cfg: Config | None = None) -> str:
    """The config as YAML with each key's description as a comment: a config file to edit."""
    cfg = cfg or Config()
    text = {key: desc for key, _, desc in describe(cfg)}
    lines: list[str] = []

    def emit(node: dict, prefix: str, indent: int) -> None:
        for key, value in node.items():
            path = f"{prefix}{key}"
            pad = "  " * indent
            if isinstance(value, dict) and value:
                lines.append(f"{pad}{key}:")
                emit(value, path + ".", indent + 1)
                continue
            dumped = yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...")
            comment = f"  # {text[path]}" if text.get(path) else ""
            lines.append(f"{pad}{key}: {dumped.strip()}{comment}")

    emit(cfg.to_dict(), "", 0)
    return "\n".join(lines) + "\n"
