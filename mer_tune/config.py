"""The typed config of one trial, with the paper's values as defaults.

Every knob a search touches is a field reachable by a dotted path, e.g.
``self_training.thresholds.worried`` or ``voting.weights.fusion``. Building a config
validates it; unknown keys are rejected with the list of valid ones.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .errors import UsageError

MER2024_CLASSES = ["neutral", "angry", "happy", "sad", "worried", "surprise"]
MODALITIES = ["audio", "visual", "text"]
HEADS = ["fusion", "audio", "visual", "text"]

# Paper: 0.99 for the four large classes, 0.85 for the two rare ones.
PAPER_THRESHOLDS = {c: 0.99 for c in MER2024_CLASSES[:4]} | {"worried": 0.85, "surprise": 0.85}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class PerModality(_Strict):
    audio: int = Field(100, ge=1, le=1000)
    visual: int = Field(100, ge=1, le=1000)
    text: int = Field(100, ge=1, le=1000)


class DataConfig(_Strict):
    classes: list[str] = Field(default_factory=lambda: list(MER2024_CLASSES), min_length=2)
    # Test names join the unlabelled pool (pretraining, pseudo-labelling), as the
    # challenge allows; their labels never exist for us.
    test_in_pool: bool = True


class OversampleConfig(_Strict):
    # Repeat samples of each class up to this count; classes above it are left alone; 0 = off.
    target: int = Field(1000, ge=0)


class ModelConfig(_Strict):
    hidden: int = Field(128, ge=4, le=4096)
    layers: int = Field(1, ge=0, le=12)
    heads: int = Field(4, ge=1, le=64)
    dropout: float = Field(0.3, ge=0.0, lt=1.0)
    head_dims: list[int] = Field(default_factory=lambda: [256, 128])
    head_dropout: float = Field(0.3, ge=0.0, lt=1.0)

    @model_validator(mode="after")
    def _heads_divide_hidden(self) -> ModelConfig:
        if self.hidden % self.heads:
            raise ValueError(
                f"model.hidden ({self.hidden}) must be divisible by model.heads ({self.heads})"
            )
        return self


class NoiseConfig(_Strict):
    # ddpm: the paper's noise embedding enhancement; gaussian and mask are alternatives.
    kind: Literal["ddpm", "gaussian", "mask", "none"] = "ddpm"
    timesteps: PerModality = Field(default_factory=PerModality)
    beta_start: float = Field(0.001, gt=0.0, lt=1.0)
    beta_end: float = Field(0.1, gt=0.0, lt=1.0)
    gaussian_std: float = Field(0.5, ge=0.0)
    mask_prob: float = Field(0.2, ge=0.0, lt=1.0)

    @model_validator(mode="after")
    def _beta_order(self) -> NoiseConfig:
        if self.beta_end < self.beta_start:
            raise ValueError(
                f"noise.beta_end ({self.beta_end}) must be >= noise.beta_start ({self.beta_start})"
            )
        return self


class LossConfig(_Strict):
    temperature: float = Field(0.1, gt=0.0)
    pair_weight: float = Field(1.0, ge=0.0)  # (A,V) (A,T) (V,T)
    combo_weight: float = Field(1.0, ge=0.0)  # each modality vs the other two
    nee_weight: float = Field(1.0, ge=0.0)  # clean vs noised embedding
    finetune_contrastive: float = Field(0.1, ge=0.0)  # contrastive terms during finetuning


class OptimConfig(_Strict):
    lr: float = Field(1e-3, gt=0.0)
    weight_decay: float = Field(1e-5, ge=0.0)
    batch_size: int = Field(256, ge=2)


class PretrainConfig(_Strict):
    enabled: bool = True
    epochs: int = Field(15, ge=0)
    # Cap on samples per pretraining epoch (0 = all); the pool is reshuffled every epoch.
    max_samples: int = Field(0, ge=0)


class FinetuneConfig(_Strict):
    epochs: int = Field(10, ge=1)


class SelfTrainingConfig(_Strict):
    enabled: bool = True
    rounds: int = Field(1, ge=0, le=10)
    thresholds: dict[str, float] = Field(default_factory=lambda: dict(PAPER_THRESHOLDS))
    # Threshold for a class that `thresholds` does not name (custom class lists).
    default_threshold: float = Field(0.95, gt=0.0, le=1.0)
    # Retraining starts from the finetuned weights, so a few epochs suffice.
    epochs: int = Field(5, ge=1)

    @model_validator(mode="after")
    def _threshold_range(self) -> SelfTrainingConfig:
        for name, value in self.thresholds.items():
            if not 0.0 < value <= 1.0:
                raise ValueError(f"self_training.thresholds.{name} = {value} is outside (0, 1]")
        return self


class VotingConfig(_Strict):
    # probs: weighted soft voting over probabilities (the paper); logits: the released code.
    mode: Literal["probs", "logits"] = "probs"
    weights: dict[str, float] = Field(
        default_factory=lambda: {"audio": 0.7, "visual": 0.4, "text": 0.3, "fusion": 0.7}
    )

    @model_validator(mode="after")
    def _weights(self) -> VotingConfig:
        unknown = sorted(set(self.weights) - set(HEADS))
        if unknown:
            raise ValueError(
                f"voting.weights.{unknown[0]} is not a head; valid: {', '.join(HEADS)}"
            )
        for name, value in self.weights.items():
            if value < 0:
                raise ValueError(f"voting.weights.{name} = {value} is negative")
        if sum(self.weights.values()) <= 0:
            raise ValueError("voting.weights are all zero")
        return self


class EvalConfig(_Strict):
    # Stratified k-fold on the labelled set; 1 = a single stratified 80/20 hold-out.
    folds: int = Field(5, ge=1, le=20)
    seed: int = 0
    # Repeated k-fold: `repeats` different fold splits (split seeds seed, seed+1, ...),
    # every fold's score averaged, so that a trial's score is less noisy.
    repeats: int = Field(1, ge=1, le=20)
    # Where each fold model picks its best epoch. inner: on a stratified slice of its own
    # training part, so the scored fold chooses nothing; scored: on the scored fold itself
    # (MERTools' protocol: comparable with papers that use it, but optimistic).
    select_on: Literal["inner", "scored"] = "inner"
    # Share of each training part set aside for epoch selection when select_on=inner.
    select_fraction: float = Field(0.15, gt=0.0, le=0.5)


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
    eval: EvalConfig = Field(default_factory=EvalConfig)
    seed: int = 0

    @model_validator(mode="after")
    def _per_class_keys(self) -> Config:
        unknown = sorted(set(self.self_training.thresholds) - set(self.data.classes))
        if unknown:
            raise ValueError(
                f"self_training.thresholds.{unknown[0]} is not a class; "
                f"valid: {', '.join(self.data.classes)}"
            )
        return self

    def threshold_of(self, cls: str) -> float:
        return self.self_training.thresholds.get(cls, self.self_training.default_threshold)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="python")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


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
    if first["type"] == "value_error":
        return f"{where}{msg}"
    return f"{where}config key '{loc}': {msg} (got {first.get('input')!r})"


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


def load_config(path: str | Path) -> Config:
    path = Path(path)
    try:
        values = yaml.safe_load(path.read_text())
    except OSError as err:
        raise UsageError(f"{path}: cannot read config ({err.strerror})") from None
    except yaml.YAMLError as err:
        raise UsageError(f"{path}: malformed YAML ({_yaml_where(err)})") from None
    if values is not None and not isinstance(values, dict):
        raise UsageError(f"{path}: a config file must be a mapping of keys to values")
    return build_config(values, source=str(path))


def _yaml_where(err: yaml.YAMLError) -> str:
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or "syntax error"
    return f"{problem} at line {mark.line + 1}" if mark else problem


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
    # Per-class thresholds may be set for every class, named or not.
    for cls in cfg.data.classes:
        path = f"self_training.thresholds.{cls}"
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
    # A class list changed in the same overrides may make new threshold keys valid.
    if path.startswith("self_training.thresholds.") or path == "data.classes":
        return
    where = f"{source}: " if source else ""
    parent = path.rpartition(".")[0]
    siblings = [p for p in valid_paths(cfg) if p.rpartition(".")[0] == parent] or valid_paths(cfg)
    raise UsageError(f"{where}unknown config key '{path}'; valid keys: {', '.join(siblings)}")


def parse_set_options(items: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """Parse ``key=value`` strings; values are YAML scalars (numbers, bools, lists)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--set {item!r}: expected key=value, e.g. optim.lr=1e-4")
        try:
            out[key.strip()] = yaml.safe_load(raw)
        except yaml.YAMLError:
            raise UsageError(f"--set {item!r}: cannot parse the value {raw!r}") from None
    return out
