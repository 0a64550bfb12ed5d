"""The typed config of one trial, with the paper's values as defaults.

Every knob a search touches is a field reachable by a dotted path, e.g.
``self_training.thresholds.worried`` or ``voting.weights.fusion``. Building a config
validates it; unknown keys are rejected with the list of valid ones.
"""

from __future__ import annotations

import copy
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from mer_tune.data.layout import MER2024_CLASSES
from mer_tune.errors import UsageError
from mer_tune.method import legacy

HEADS = ["fusion", "audio", "visual", "text"]
# Bounds of a learned NT-Xent temperature: below 0.01 a term's logits blow up. The
# released start, 1.0, sits well inside, so a temperature may rise from it too (at the
# bound a clamp passes no gradient, and it would stay there).
MIN_TAU, MAX_TAU = 0.01, 10.0

# Paper: 0.99 for the four large classes, 0.85 for the two rare ones.
PAPER_THRESHOLDS = {c: 0.99 for c in MER2024_CLASSES[:4]} | {"worried": 0.85, "surprise": 0.85}
PAPER_VOTE_WEIGHTS = {"audio": 0.7, "visual": 0.4, "text": 0.3, "fusion": 0.7}
# Mappings with one value per class of the data (a class not named takes a default).
PER_CLASS = ("self_training.thresholds", "decision.offsets")
# numpy's RandomState (sklearn's fold splits, Optuna's sampler) takes seeds below this.
SEED_LIMIT = 2**32


class _Strict(BaseModel):
    # No field gives inf or NaN a meaning (such as 'no limit'): one only makes the scores nonsense.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_booleans_as_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        """pydantic reads true as 1 for a number; `layers: true` is a mistake, not 1."""
        if isinstance(value, dict):
            named = value.items()
        elif isinstance(value, list):
            named = enumerate(value)
        elif isinstance(value, bool):
            named = [(None, value)]
        else:
            return value  # most values: no bool in them, nothing to look up
        kind = cls.model_fields[info.field_name].annotation
        inner_kinds = [k for k in typing.get_args(kind) if k is not type(None)]  # int | None
        if not (kind in (int, float) or inner_kinds[-1:] in ([int], [float])):
            return value
        for inner, item in named:
            if isinstance(item, bool):
                raise PydanticCustomError(
                    "bool_as_number",
                    "= {item}: expected a number, not true or false",
                    {"item": str(item).lower(), "inner": inner},
                )
        return value


class PerModality(_Strict):
    audio: int = Field(100, ge=1, le=1000, description="NEE diffusion steps T for audio")
    visual: int = Field(100, ge=1, le=1000, description="NEE diffusion steps T for visual")
    text: int = Field(100, ge=1, le=1000, description="NEE diffusion steps T for text")


class DataConfig(_Strict):
    classes: list[str] = Field(
        default_factory=lambda: list(MER2024_CLASSES),
        min_length=2,
        description="class names, in label order",
    )
    test_in_pool: bool = Field(
        True,
        description="test names (and a search's holdout) join the unlabelled pool, "
        "features only, as the challenge allows",
    )

    @model_validator(mode="after")
    def _each_class_once(self) -> DataConfig:
        # A class named twice gets two label indices for one name: caught here rather
        # than by a confusing label error later.
        twice = sorted({c for c in self.classes if self.classes.count(c) > 1})
        if twice:
            raise ValueError(
                f"data.classes names {', '.join(repr(c) for c in twice)} more than once"
            )
        return self


class OversampleConfig(_Strict):
    target: int = Field(
        1000,
        ge=0,
        description="repeat each class's samples up to this count (larger classes "
        "untouched; 0 = off)",
    )


class ModelConfig(_Strict):
    hidden: int = Field(128, ge=4, le=4096, description="embedding width of every encoder")
    layers: int = Field(
        2,
        ge=0,
        le=12,
        description="Transformer layers per specificity encoder (the paper: 'multiple')",
    )
    heads: int = Field(4, ge=1, le=64, description="attention heads (must divide hidden)")
    dropout: float = Field(0.3, ge=0.0, lt=1.0, description="dropout in the encoders")
    head_dims: list[int] = Field(
        default_factory=lambda: [256, 128], description="hidden widths of each classifier head"
    )
    head_dropout: float = Field(0.3, ge=0.0, lt=1.0, description="dropout in the heads")
    invariant: Literal["figure", "unused", "sum"] = Field(
        "figure",
        description="where the invariant encoder's codes H go: figure (the paper's figure: "
        "the six modality terms on H, the noise terms and the heads on the specificity "
        "features), unused (the released file: every term and head on the specificity "
        "features) or sum (specificity features + H everywhere)",
    )

    @model_validator(mode="after")
    def _heads_divide_hidden(self) -> ModelConfig:
        if self.hidden % self.heads:
            raise ValueError(
                f"model.hidden ({self.hidden}) must be divisible by model.heads ({self.heads})"
            )
        return self


class NoiseConfig(_Strict):
    kind: Literal["ddpm", "gaussian", "mask", "none"] = Field(
        "ddpm",
        description="embedding augmentation: ddpm (the paper's NEE), gaussian, mask, none",
    )
    timesteps: PerModality = Field(default_factory=PerModality)
    beta_start: float = Field(0.001, gt=0.0, lt=1.0, description="first DDPM beta")
    beta_end: float = Field(0.1, gt=0.0, lt=1.0, description="last DDPM beta (scaled-linear)")
    gaussian_std: float = Field(0.5, ge=0.0, description="noise std for kind=gaussian")
    mask_prob: float = Field(0.2, ge=0.0, lt=1.0, description="feature drop rate for kind=mask")
    scale: float = Field(
        1.0,
        ge=0.0,
        le=10.0,
        description="multiplier on the noise of whichever kind (1 = as set): the DDPM and "
        "gaussian noise std, the mask's drop rate (capped at 0.95)",
    )
    applied_to: Literal["standardised", "raw"] = Field(
        "raw",
        description="features the noise is added to: raw (as stored, then standardised: "
        "the released code) or standardised (per-dimension z-scores)",
    )

    @model_validator(mode="after")
    def _beta_order(self) -> NoiseConfig:
        if self.beta_end < self.beta_start:
            raise ValueError(
                f"noise.beta_end ({self.beta_end}) must be >= noise.beta_start ({self.beta_start})"
            )
        return self


class LossConfig(_Strict):
    temperature: float = Field(
        0.1, gt=0.0, description="NT-Xent temperature of every term when not learned"
    )
    learn_temperature: bool = Field(
        True, description="one learnable temperature per contrastive term (nine), as released"
    )
    temperature_init: float = Field(
        1.0,
        ge=MIN_TAU,
        le=MAX_TAU,
        description="start of the learned temperatures (released: 1.0), kept in [0.01, 10]",
    )
    weighting: Literal["paper", "equal"] = Field(
        "paper",
        description="paper: the six modality terms summed over 6 + mean of the noise terms "
        "(the released code); equal: mean of the pair terms + mean of the one-vs-two terms "
        "+ mean of the noise terms",
    )
    pair_weight: float = Field(1.0, ge=0.0, description="weight of the (A,V) (A,T) (V,T) terms")
    combo_weight: float = Field(1.0, ge=0.0, description="weight of each modality vs the other two")
    nee_weight: float = Field(1.0, ge=0.0, description="weight of clean vs noised embedding")
    invariant: Literal["none", "cmd", "ntxent"] = Field(
        "none",
        description="a loss on the invariant codes alone: none, cmd (central moment "
        "discrepancy between the modalities, 5 moments, as one released version) or ntxent "
        "(a sample's three modalities as positives)",
    )
    invariant_weight: float = Field(1.0, ge=0.0, description="weight of the loss.invariant term")
    supervised: Literal["released", "mean_heads"] = Field(
        "released",
        description="finetuning's classification loss: released (each head's logits times "
        "its self_training.confidence_weights weight; cross-entropy on their sum, the "
        "vote's logits, plus the mean cross-entropy of the weighted heads) or mean_heads "
        "(the mean cross-entropy of the four unweighted heads)",
    )
    finetune_contrastive: float = Field(
        1.0, ge=0.0, description="weight of the contrastive terms while finetuning"
    )
    finetune_noise: bool = Field(
        True, description="the contrastive terms while finetuning include the noise terms"
    )

    @model_validator(mode="after")
    def _invariant_weight_of_a_term(self) -> LossConfig:
        # Before loss.invariant existed, a weight above 0 turned the term on: a weight
        # other than off (0) or the default (1) with no term chosen would now do nothing.
        if self.invariant == "none" and self.invariant_weight not in (0.0, 1.0):
            raise ValueError(
                f"loss.invariant_weight = {self.invariant_weight} weighs no term: set "
                "loss.invariant to cmd or ntxent (or leave the weight)"
            )
        return self


class OptimConfig(_Strict):
    lr: float = Field(1e-3, gt=0.0, description="Adam learning rate")
    weight_decay: float = Field(1e-5, ge=0.0, description="Adam weight decay")
    batch_size: int = Field(256, ge=2, description="samples per step")


class PretrainConfig(_Strict):
    enabled: bool = Field(True, description="contrastive pretraining on all features")
    epochs: int = Field(15, ge=0, description="pretraining epochs")
    max_samples: int = Field(
        0, ge=0, description="cap on samples per pretraining epoch, reshuffled (0 = all)"
    )


class FinetuneConfig(_Strict):
    epochs: int = Field(10, ge=1, description="supervised epochs; the best one is kept")


class SelfTrainingConfig(_Strict):
    enabled: bool = Field(True, description="pseudo-label the pool and retrain")
    init: Literal["pretrained", "finetuned"] = Field(
        "pretrained",
        description="where each retraining round starts: pretrained (a fresh model from the "
        "contrastive-pretrained weights, as the paper's step 2) or finetuned (warm: the "
        "finetuned weights, then the last round's)",
    )
    rounds: int = Field(1, ge=0, le=10, description="pseudo-label + retrain rounds")
    thresholds: dict[str, float] = Field(
        default_factory=lambda: dict(PAPER_THRESHOLDS),
        description="per-class confidence a pool sample needs to be kept",
    )
    default_threshold: float = Field(
        0.95, gt=0.0, le=1.0, description="threshold of a class `thresholds` does not name"
    )
    epochs: int | None = Field(
        None,
        ge=1,
        description="retraining epochs per round (null: finetune.epochs, the same schedule)",
    )
    confidence: Literal["equal_probs", "weighted_probs", "weighted_logits"] = Field(
        "weighted_logits",
        description="a pool sample's confidence: equal_probs (mean of the heads' "
        "probabilities), weighted_probs (their weighted mean) or weighted_logits (softmax "
        "of the weighted sum of the heads' logits: the released model)",
    )
    confidence_weights: dict[str, float] = Field(
        default_factory=lambda: dict(PAPER_VOTE_WEIGHTS),
        description="weight of each head in the weighted confidences",
    )

    @model_validator(mode="after")
    def _threshold_range(self) -> SelfTrainingConfig:
        for name, value in self.thresholds.items():
            if not 0.0 < value <= 1.0:
                raise ValueError(f"self_training.thresholds.{name} = {value} is outside (0, 1]")
        _check_head_weights(self.confidence_weights, "self_training.confidence_weights")
        return self


class VotingConfig(_Strict):
    mode: Literal["probs", "logits"] = Field(
        "probs",
        description="probs: weighted soft vote of probabilities (the paper); logits: "
        "softmax of the weighted logits (the released code)",
    )
    weights: dict[str, float] = Field(
        default_factory=lambda: dict(PAPER_VOTE_WEIGHTS),
        description="vote weight of each head",
    )

    @model_validator(mode="after")
    def _weights(self) -> VotingConfig:
        _check_head_weights(self.weights, "voting.weights")
        return self


def _check_head_weights(weights: dict[str, float], where: str) -> None:
    unknown = sorted(set(weights) - set(HEADS))
    if unknown:
        raise ValueError(f"{where}.{unknown[0]} is not a head; valid: {', '.join(HEADS)}")
    for name, value in weights.items():
        if value < 0:
            raise ValueError(f"{where}.{name} = {value} is negative")
    if sum(weights.values()) <= 0:
        raise ValueError(f"{where} are all zero")


MAX_OFFSET = 5.0  # a larger logit offset overrides the vote outright


class DecisionConfig(_Strict):
    offsets: dict[str, float] = Field(
        default_factory=dict,
        description="per-class additive offset on the log of the vote's probabilities "
        "(0, the plain vote, for a class not named)",
    )

    @model_validator(mode="after")
    def _offset_range(self) -> DecisionConfig:
        for name, value in self.offsets.items():
            if not -MAX_OFFSET <= value <= MAX_OFFSET:
                raise ValueError(
                    f"decision.offsets.{name} = {value} is outside "
                    f"[{-MAX_OFFSET:g}, {MAX_OFFSET:g}]"
                )
        return self


class EvalConfig(_Strict):
    folds: int = Field(
        5, ge=1, le=20, description="stratified folds (1 = a single stratified 80/20 split)"
    )
    # Repeat r splits with seed + r (r < 20).
    seed: int = Field(0, ge=0, le=SEED_LIMIT - 20, description="seed of the fold split")
    repeats: int = Field(
        1,
        ge=1,
        le=20,
        description="different fold splits (seeds seed, seed+1, ...), every fold averaged",
    )
    select_on: Literal["inner", "scored"] = Field(
        "inner",
        description="where a fold model picks its best epoch: inner (a slice of its own "
        "training part) or scored (the scored fold: MERTools' protocol, optimistic)",
    )
    select_fraction: float = Field(
        0.15, gt=0.0, le=0.5, description="share of a training part that picks the epoch"
    )


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
    if first["type"] == "bool_as_number":  # the key of the item in a mapping or list too
        inner = first["ctx"]["inner"]
        return f"{where}config key '{loc}{'' if inner is None else f'.{inner}'}' {msg}"
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
    if path.exists():
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
    try:
        values = yaml.safe_load(path.read_text())
    except OSError as err:
        raise UsageError(f"{path}: cannot read config ({err.strerror})") from None
    except UnicodeDecodeError:
        raise UsageError(f"{path}: cannot read config (not a UTF-8 text file)") from None
    except yaml.YAMLError as err:
        raise UsageError(f"{path}: malformed YAML ({_yaml_where(err)})") from None
    if values is not None and not isinstance(values, dict):
        raise UsageError(f"{path}: a config file must be a mapping of keys to values")
    values, _ = legacy.upgrade(values)  # a full config of an earlier release keeps its method
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
        if not sep or not key.strip():
            raise UsageError(f"--set {item!r}: expected key=value, e.g. optim.lr=1e-4")
        try:
            out[key.strip()] = yaml.safe_load(raw)
        except yaml.YAMLError:
            raise UsageError(f"--set {item!r}: cannot parse the value {raw!r}") from None
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
