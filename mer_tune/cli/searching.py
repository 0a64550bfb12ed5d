"""`mer-tune search`, `report`, `confirm` and `pick`: a search and what it found."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from click.core import ParameterSource

from mer_tune.cli import options
from mer_tune.cli.options import (
    SEED,
    NonEmptyPath,
    config_from,
    data_options_from,
    non_empty,
)
from mer_tune.errors import MerTuneError
from mer_tune.hpo.samplers import SAMPLERS
from mer_tune.outputs import no_empty_folder_left
from mer_tune.printing import SearchProgress, console, print_confirm, print_summary


@click.command()
@click.option(
    "--space",
    default="thresholds",
    show_default=True,
    help="A shipped space (see `mer-tune spaces`) or a YAML file.",
)
@click.option("--trials", type=int, default=8, show_default=True)
@options.data_spec
@options.config_file(
    "Base config YAML, or a shipped config: paper (the MERTools schedule, for a GPU)."
)
@options.sets("Override a base config value.")
@click.option(
    "--folds",
    type=click.IntRange(1, 20),
    default=1,
    show_default=True,
    help="Folds per trial (1 = an 80/20 hold-out).",
)
@click.option(
    "--concurrency", type=click.IntRange(1), help="Trials at once (default: CPUs / cpus-per-trial)."
)
@click.option("--cpus-per-trial", type=click.FloatRange(0.1), default=1, show_default=True)
@click.option(
    "--gpus-per-trial",
    type=click.FloatRange(0),
    help="Fractions allowed (default: 1 where the cluster has GPUs, else 0).",
)
@click.option(
    "--scheduler",
    type=click.Choice(["none", "asha", "folds"]),
    default="none",
    show_default=True,
    help="Early stopping: asha (by epoch, on the first objective) or folds (a trial whose "
    "folds are clearly behind the best trial's; needs --folds 2 or more).",
)
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--address", help="Ray cluster address (default: a local Ray).")
@click.option(
    "--storage",
    type=NonEmptyPath(),
    default="mer-tune-runs",
    show_default=True,
    help="Folder for results, Optuna study and stage cache.",
)
@options.tracking_uri
@click.option(
    "--experiment",
    default="mer-tune",
    show_default=True,
    callback=non_empty,
    help="MLflow experiment name.",
)
@click.option("--name", help="Name of this search (default: SPACE-DATE-TIME).")
@click.option("--no-cache", is_flag=True, help="Recompute every stage in every trial.")
@click.option(
    "--cache-dir",
    callback=non_empty,
    help="Stage cache folder or URI (s3://..., gs://...; default: STORAGE/NAME/cache).",
)
@click.option(
    "--resume",
    "resume_name",
    metavar="NAME",
    help="Continue the interrupted search NAME (in --storage).",
)
@click.option(
    "--trial-timeout",
    type=click.FloatRange(0, min_open=True),
    help="Seconds; a longer trial fails.",
)
@click.option(
    "--strategy",
    type=click.Choice(["flat", "staged"]),
    default="flat",
    show_default=True,
    help="staged: search upstream parameters first, then thresholds, then voting weights.",
)
@click.option(
    "--max-failures",
    type=click.IntRange(0),
    default=0,
    show_default=True,
    help="Retries of a failing trial.",
)
@click.option(
    "--holdout",
    type=float,
    default=0.2,
    show_default=True,
    help="Share of the labelled set kept out of the search and used only to confirm its "
    "winner (0 = none: the best score is then optimistic).",
)
@click.option("--holdout-seed", type=SEED, help="Seed of the holdout draw (default: --seed).")
@click.option(
    "--repeats",
    type=click.IntRange(1, 20),
    help="Repeated fold splits per trial, averaged (less noisy selection).",
)
@click.option(
    "--confirm-top",
    type=click.IntRange(0),
    default=3,
    show_default=True,
    help="Best trials confirmed on the holdout, besides the baseline (0 = no confirm step).",
)
@click.option(
    "--confirm-seeds",
    type=click.IntRange(0),
    default=0,
    show_default=True,
    help="Also retrain each confirmed config on all non-holdout data with this many seeds.",
)
@click.option(
    "--objective",
    "objectives",
    multiple=True,
    metavar="NAME",
    help="What to optimise (repeatable or comma-separated): weighted_f1 (default), "
    "min_class_f1, train_seconds, pseudo_precision. Several give a Pareto front.",
)
@click.option(
    "--pick",
    help="With several objectives, the front point for best_config.yaml, e.g. "
    "'max weighted_f1 where min_class_f1>=0.6'.",
)
@click.option(
    "--from-search",
    "from_searches",
    multiple=True,
    metavar="NAME",
    help="Seed Optuna with the finished trials of the earlier search NAME (in --storage; "
    "repeatable). Trials whose other settings differ are left out.",
)
@click.option(
    "--batch",
    type=click.IntRange(1),
    help="Trials per Ray task when every searched parameter is downstream of the stage "
    "cache (voting, decision): default 100 there; 1 = a Ray Tune trial each.",
)
@click.option(
    "--sampler",
    type=click.Choice(SAMPLERS),
    metavar="NAME",
    default="tpe",
    show_default=True,
    help="Optuna's sampler: tpe, gp (small budgets, numeric spaces), random, cmaes "
    "(numeric spaces, one objective) or auto (gp for a numeric space and at most 40 "
    "trials, else tpe).",
)
@click.option(
    "--share-features",
    is_flag=True,
    help="GPU trials on one card read one copy of the features (CUDA IPC from a holder "
    "per card) instead of each uploading its own.",
)
@options.data_options
def search(**opts) -> None:
    """Search hyperparameters: Ray Tune runs the trials, Optuna suggests them, MLflow
    records each one as a nested run under the search's parent run.

    A stratified --holdout share of the labelled set is set aside first; trials select on
    the rest. At the end the --confirm-top best trials and the baseline (trial 0, the
    paper's values) are scored on the holdout, and a verdict says whether the winner
    beats the baseline. Writes STORAGE/NAME/results.csv, confirm.csv, verdict.json and
    best_config.yaml (loadable by `mer-tune run --config`)."""
    from mer_tune.hpo.session import SearchSession
    from mer_tune.hpo.staged import run_staged

    progress = SearchProgress(opts["trials"])
    if opts["resume_name"] is not None:
        _only_with_resume({"resume_name", "storage", "address"})
        session = SearchSession.resume(
            opts["resume_name"], opts["storage"], opts["address"], progress
        )
        progress.resumed(session.ctx.record.trials, list(session.ctx.rows.values()))
        _conclude(session.run())
        return
    settings = _settings(opts)
    with no_empty_folder_left(Path(settings.storage).absolute()):
        if opts["strategy"] == "staged":
            res = run_staged(settings, progress)
        else:
            res = SearchSession.start(settings, progress).run()
    _conclude(res)


# `search` options whose SearchSettings field has another name (or is not a field).
RENAMED = {"data_spec": "data", "config_file": None, "sets": None, "no_cache": None}
NOT_SETTINGS = {"resume_name", "strategy", "data_args"}


def _settings(opts: dict):
    """SearchSettings from the options, after the refusals of options that would do
    nothing in this combination."""
    from mer_tune.hpo.settings import SearchSettings

    if opts["strategy"] == "staged":
        for option, key in (
            ("--from-search", "from_searches"),
            ("--objective", "objectives"),
            ("--pick", "pick"),
        ):
            if opts[key]:
                raise click.BadParameter("not with --strategy staged", param_hint=option)
    if opts["holdout"] == 0:  # these would do nothing: refused rather than ignored
        for param in ("holdout_seed", "confirm_top", "confirm_seeds"):
            if _given(param):
                option = "--" + param.replace("_", "-")
                raise click.UsageError(f"{option} with --holdout 0: there is no holdout to use")
    cfg = config_from(opts["config_file"], opts["sets"])
    fields = {
        RENAMED.get(k, k): v
        for k, v in opts.items()
        if k not in NOT_SETTINGS and RENAMED.get(k, k) is not None
    }
    return SearchSettings(
        **fields,
        config=cfg,
        cache=not opts["no_cache"],
        data_options=data_options_from(cfg, opts["data_args"]),
    )


def _conclude(res) -> None:
    """The summary of a search; its exit code says whether it has a result to use."""
    print_summary(res)
    if res.best_score is None:  # a script must not read a search of no result as done
        raise MerTuneError(
            f"every trial of search {res.path.name} failed; their errors are in "
            f"{res.path / 'results.csv'} (column error)"
        )
    if res.pick_error:
        sys.exit(1)  # the search and its front are kept; `mer-tune pick` chooses again


def _given(param: str) -> bool:
    """Whether the user gave the current command's option `param` (not its default)."""
    source = click.get_current_context().get_parameter_source(param)
    return source not in (None, ParameterSource.DEFAULT)


def _only_with_resume(allowed: set[str]) -> None:
    """--resume continues a search with the settings it recorded: any other option given
    would be ignored, so it is refused instead."""
    for param in click.get_current_context().command.params:
        if param.name not in allowed and _given(param.name):
            raise click.UsageError(
                f"{param.opts[0]} with --resume: a resumed search keeps the settings it "
                "recorded; drop the option (only --storage and --address apply)"
            )


@click.command()
@click.argument("name")
@options.storage
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "csv", "json"]),
    default="table",
    show_default=True,
)
@click.option("--top", type=click.IntRange(1), default=5, show_default=True)
@click.option(
    "--section",
    type=click.Choice(["top", "confirm", "pareto"]),
    default="top",
    show_default=True,
    help="Which table --format csv prints: the top trials, the confirm step or the Pareto front.",
)
def report(name, storage, fmt, top, section) -> None:
    """The top trials, best config, parameter importances, failures, plots and the confirm
    step (holdout scores and verdict) of search NAME."""
    from mer_tune.hpo.report import build_report, format_report

    click.echo(format_report(build_report(name, storage, top), fmt, section))


@click.command(name="confirm")
@click.argument("name")
@options.storage
@click.option(
    "--confirm-top",
    "top",
    type=click.IntRange(1),
    help="Best trials to confirm besides the baseline (default: the search's setting).",
)
@click.option(
    "--confirm-seeds",
    "seeds",
    type=click.IntRange(0),
    help="Retrain each confirmed config with this many seeds (default: the search's).",
)
@click.option("--address", help="Ray cluster address for retraining (default: a local Ray).")
def confirm_cmd(name, storage, top, seeds, address) -> None:
    """Score the best trials of the finished search NAME and its baseline on the outer
    holdout, and print the verdict (rewrites confirm.csv, verdict.json, best_config.yaml)."""
    from mer_tune.hpo.confirm_step import confirm_search
    from mer_tune.hpo.folder import SearchFolder

    res = confirm_search(SearchFolder.of(storage, name, "confirm").path, top, seeds, address)
    print_confirm(res.confirm, res.holdout_size)
    for note in res.notes:
        console.print(f"[yellow]note:[/yellow] {note}", soft_wrap=True)
    click.echo(f"verdict: {res.verdict.text}")


@click.command(name="pick")
@click.argument("name")
@click.argument("expression")
@options.storage
def pick_cmd(name, expression, storage) -> None:
    """Choose a point of the Pareto front of the multi-objective search NAME, e.g.
    'max weighted_f1 where min_class_f1>=0.6', and write it to best_config.yaml."""
    from mer_tune.hpo.folder import SearchFolder
    from mer_tune.hpo.front import repick

    trial, path = repick(SearchFolder.of(storage, name, "pick"), expression)
    click.echo(f"trial {trial} -> {path}")
