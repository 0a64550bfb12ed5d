"""Objectives, the Pareto front and --pick, without a search."""

import pandas as pd
import pytest

from mer_tune.errors import UsageError
from mer_tune.hpo.objectives import (
    apply_pick,
    check_scheduler,
    modes,
    pareto_front,
    parse,
    parse_pick,
    rung,
)

RESULTS = pd.DataFrame(
    {
        "trial": [0, 1, 2, 3, 4, 5],
        "status": ["FINISHED"] * 5 + ["FAILED"],
        "weighted_f1": [0.80, 0.85, 0.78, 0.84, 0.70, None],
        "min_class_f1": [0.50, 0.40, 0.60, 0.40, 0.55, None],
        "train_seconds": [10.0, 30.0, 12.0, 20.0, 5.0, None],
    }
)


def test_objectives_parse_in_order_with_their_directions():
    assert parse(None) == ["weighted_f1"]
    assert parse(("weighted_f1,min_class_f1", "train_seconds")) == [
        "weighted_f1",
        "min_class_f1",
        "train_seconds",
    ]
    assert modes(["weighted_f1", "train_seconds"]) == ["max", "min"]
    with pytest.raises(UsageError, match="--objective f1: unknown objective; valid: weighted_f1"):
        parse(["f1"])
    with pytest.raises(UsageError, match="named twice"):
        parse(["weighted_f1", "weighted_f1"])


def test_the_front_keeps_exactly_the_undominated_finished_trials():
    two = pareto_front(RESULTS, ["weighted_f1", "min_class_f1"])
    # 3 is dominated by 1 (same worst class, lower F1); 4 by 0; 5 failed.
    assert list(two["trial"]) == [1, 0, 2]
    # Minimising time makes the fast trial 4 a trade-off point too.
    three = pareto_front(RESULTS, ["weighted_f1", "min_class_f1", "train_seconds"])
    assert sorted(three["trial"]) == [0, 1, 2, 3, 4]
    assert list(pareto_front(RESULTS, ["weighted_f1"])["trial"]) == [1]


def test_pick_takes_the_best_point_meeting_its_conditions():
    front = pareto_front(RESULTS, ["weighted_f1", "min_class_f1"])
    goals = ["weighted_f1", "min_class_f1"]
    assert apply_pick(front, parse_pick("max weighted_f1", goals))["trial"] == 1
    assert (
        apply_pick(front, parse_pick("max weighted_f1 where min_class_f1>=0.5", goals))["trial"]
        == 0
    )
    picked = apply_pick(
        front, parse_pick("min weighted_f1 where min_class_f1 > 0.45 and weighted_f1>0.79", goals)
    )
    assert picked["trial"] == 0


def test_a_pick_no_point_meets_names_the_closest_point():
    front = pareto_front(RESULTS, ["weighted_f1", "min_class_f1"])
    pick = parse_pick("max weighted_f1 where min_class_f1>=0.65", ["weighted_f1", "min_class_f1"])
    with pytest.raises(UsageError, match=r"closest: trial 2 \(min_class_f1 0\.6\)"):
        apply_pick(front, pick)


@pytest.mark.parametrize(
    "text, message",
    [
        ("best weighted_f1", "expected 'max|min OBJECTIVE"),
        ("max weighted_f1 where min_class_f1 >> 0.6", "cannot read the condition"),
        ("max train_seconds", "train_seconds is not an objective of this search"),
        ("max weighted_f1 where min_class_f1>=1e400", "'1e400' is not a finite number"),
    ],
    ids=["no-goal", "bad-condition", "not-an-objective", "overflow"],
)
def test_a_bad_pick_is_one_line(text, message):
    with pytest.raises(UsageError, match=message) as err:
        parse_pick(text, ["weighted_f1", "min_class_f1"])
    assert str(err.value).startswith("--pick ") and "\n" not in str(err.value)


def test_asha_compares_trials_only_on_an_objective_reported_every_epoch():
    check_scheduler(["train_seconds", "weighted_f1"], "asha")  # minimised, per epoch: fine
    assert rung(["train_seconds", "weighted_f1"]) == ("train_seconds", "min")
    assert rung(["min_class_f1", "train_seconds"]) == ("min_class_f1", "max")
    check_scheduler(["pseudo_precision"], "none")
    with pytest.raises(UsageError, match="pseudo_precision is known only when a trial ends"):
        check_scheduler(["pseudo_precision", "weighted_f1"], "asha")
