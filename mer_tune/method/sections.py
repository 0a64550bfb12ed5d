"""The sections of the trial config (data, model, noise, loss, ... eval), each a strict
pydantic model with the paper's values as defaults; config.py assembles them into Config.
"""

from __future__ import annotations

import typing
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from mer_tune.data.layout import MER2024_CLASSES

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
    inner_pool: Literal["transductive", "inductive"] = Field(
        "transductive",
        description="transductive: each scored fold's features join its fold model's "
        "unlabelled pool (labels hidden), as the outer holdout and the test names do, so a "
        "threshold is scored as it is deployed; inductive: the pool never holds them",
    )
