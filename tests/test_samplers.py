"""--sampler: which Optuna sampler suggests the trials, checked against the space,
seeded, recorded and resumed with the search."""

import pytest
import yaml
from conftest import tiny_search
from mlflow.tracking import MlflowClient

from mer_tune.errors import UsageError
from mer_tune.hpo import samplers
from mer_tune.hpo.settings import SearchSettings
from mer_tune.hpo.spaces import load_space, space_from_dict

NUMERIC = space_from_dict(
    {"params": {"optim.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}}},
    None,
    "numeric",
    "numeric.yaml",
)


@pytest.mark.parametrize(
    "name, space, goals, message",
    [
        ("cmaes", "thresholds", ["weighted_f1"],
         "--sampler cmaes: CMA-ES searches numbers only, and self_training.confidence is "
         "categorical; use tpe or gp"),
        ("cmaes", "noise", ["weighted_f1"], "--sampler cmaes: CMA-ES searches numbers only, and noise.kind"),
        ("cmaes", "voting", ["weighted_f1", "min_class_f1"],
         "--sampler cmaes: CMA-ES has no multi-objective form; use tpe, gp or random"),
        ("anneal", "voting", ["weighted_f1"], "--sampler anneal: expected one of tpe, gp"),
    ],
)  # fmt: skip
def test_a_sampler_that_cannot_search_the_space_is_refused_in_one_line(name, space, goals, message):
    with pytest.raises(UsageError, match="^" + message.replace("(", r"\(")):
        samplers.resolve(name, load_space(space), 8, goals)


def test_gp_takes_a_conditional_space_and_cmaes_a_numeric_one():
    conditional = load_space("noise")
    assert conditional.conditions  # its parameters hang on the categorical noise.kind
    assert samplers.resolve("gp", conditional, 8, ["weighted_f1"]) == "gp"
    assert samplers.resolve("cmaes", NUMERIC, 8, ["weighted_f1"]) == "cmaes"


def test_auto_takes_gp_for_a_small_numeric_budget_and_tpe_otherwise():
    voting = load_space("voting")
    assert samplers.resolve("auto", voting, 16, ["weighted_f1"]) == "gp"
    assert samplers.resolve("auto", voting, samplers.AUTO_GP_TRIALS + 1, ["weighted_f1"]) == "tpe"
    assert samplers.resolve("auto", load_space("thresholds"), 16, ["weighted_f1"]) == "tpe"
    assert samplers.resolve("auto", NUMERIC, 16, ["weighted_f1", "min_class_f1"]) == "gp"


@pytest.mark.parametrize("name", ["tpe", "gp", "random", "cmaes"])
def test_each_sampler_is_seeded(name):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)

    def suggestions(seed: int) -> list[float]:
        study = optuna.create_study(sampler=samplers.make(name, seed))
        study.optimize(lambda t: -((t.suggest_float("x", 0, 1) - 0.3) ** 2), n_trials=12)
        return [t.params["x"] for t in study.trials]

    assert suggestions(0) == suggestions(0)
    assert suggestions(0) != suggestions(1)


def test_the_settings_refuse_an_unknown_sampler():
    with pytest.raises(UsageError, match="--sampler sa: expected one of tpe, gp, random"):
        SearchSettings(sampler="sa")


@pytest.mark.parametrize("sampler, space, batch", [("gp", None, None), ("random", "voting", 2)])
def test_the_sampler_is_recorded_and_used_by_tune_and_batched_searches(
    search_env, tiny_dir, sampler, space, batch
):
    extra = {"space": space, "batch": batch} if space else {}
    res = tiny_search(search_env, tiny_dir, trials=3, sampler=sampler, name="s", **extra)
    assert (res.results["status"] == "FINISHED").sum() == 3
    state = yaml.safe_load((res.path / "search.yaml").read_text())
    assert state["sampler"] == sampler
    parent = MlflowClient(res.tracking_uri).get_run(res.parent_run_id)
    assert parent.data.params["sampler"] == sampler
