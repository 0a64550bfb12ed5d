"""Which Optuna sampler suggests a search's trials (`--sampler`).

tpe     Tree-structured Parzen estimators: any space, several objectives (the default)
gp      Gaussian-process Bayesian optimisation (Optuna 5's GPSampler): built for small
        budgets and numeric spaces; takes categoricals and several objectives too
random  independent uniform draws: the baseline any sampler must beat
cmaes   CMA-ES: numeric spaces and one objective only (a conditional parameter hangs on
        a categorical one, so a numeric space has none)
auto    gp for a numeric, unconditional space searched in at most AUTO_GP_TRIALS trials,
        else tpe. Measured on a voting search (benchmarks/search_value.py): GP's
        winners matched TPE's at 16 and 40 trials; past 100, GP was five times slower
        per trial and no better.

Every sampler is seeded by the search's seed, and lives inside the study that Ray
checkpoints with the search (or the batched actor rebuilds), so a resumed search
continues it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mer_tune.errors import UsageError

if TYPE_CHECKING:  # the CLI reads SAMPLERS without importing Optuna
    from mer_tune.hpo.spaces import Space

SAMPLERS = ("tpe", "gp", "random", "cmaes", "auto")
AUTO_GP_TRIALS = 40


def resolve(name: str, space: Space, trials: int, goals: list[str]) -> str:
    """The sampler a search uses (`auto` decided), or one line on why `name` cannot
    search this space."""
    if name not in SAMPLERS:
        raise UsageError(f"--sampler {name}: expected one of {', '.join(SAMPLERS)}")
    categorical = [k for k, d in space.params.items() if _is_categorical(d)]
    conditional = sorted(space.conditions)
    if name == "auto":
        return "gp" if trials <= AUTO_GP_TRIALS and not categorical and not conditional else "tpe"
    if name == "cmaes":
        if len(goals) > 1:
            raise UsageError(
                "--sampler cmaes: CMA-ES has no multi-objective form; use tpe, gp or random"
            )
        if categorical:
            raise UsageError(
                f"--sampler cmaes: CMA-ES searches numbers only, and {categorical[0]} is "
                "categorical; use tpe or gp"
            )
    return name


def make(name: str, seed: int) -> Any:
    """The Optuna sampler `name` (already resolved), seeded."""
    import optuna

    samplers = {
        "tpe": optuna.samplers.TPESampler,
        "gp": optuna.samplers.GPSampler,
        "random": optuna.samplers.RandomSampler,
        "cmaes": optuna.samplers.CmaEsSampler,
    }
    return samplers[name](seed=seed)


def _is_categorical(dist: Any) -> bool:
    import optuna

    return isinstance(dist, optuna.distributions.CategoricalDistribution)
