"""The `mer-tune` command line. Each command parses, calls one function, prints."""

from __future__ import annotations

import contextlib
import functools
import sys
import time
from pathlib import Path

import click
from click.core import ParameterSource

from mer_tune.data.layout import DEFAULT_FOLDERS, DEFAULT_MODELS, DataOptions
from mer_tune.errors import MerTuneError, SearchInterrupted
from mer_tune.method.config import (
    SEED_LIMIT,
    Config,
    build_config,
    load_config,
    parse_set_options,
    with_overrides,
)
from mer_tune.outputs import no_empty_folder_left
from mer_tune.printing import (
    Progress,
    SearchProgress,
    console,
    print_confirm,
    print_extract_summary,
    print_summary,
)

SEED = click.IntRange(0, SEED_LIMIT - 1)  # what numpy and the config take


class NonEmptyPath(click.Path):
    """A path option that refuses '': as a path it means the current folder, where a
    command would then write (or overwrite) its files unasked."""

    def convert(self, value, param, ctx):
        if isinstance(value, str) and not value.strip():
            self.fail("an empty path; name a file or folder ('.' for this one)", param, ctx)
        return super().convert(value, param, ctx)


def _non_empty(ctx, param, value):
    if isinstance(value, str) and not value.strip():
        raise click.BadParameter("must not be empty")
    return value


DATA_HELP = "A MERTools feature folder, or synthetic:tiny|small|full (default: the built-in synthetic:small)."


def _config(config_file: str | None, sets: tuple[str, ...], folds: int | None = None) -> Config:
    cfg = load_config(config_file) if config_file is not None else build_config()
    overrides = parse_set_options(sets)
    if folds is not None:
        overrides["eval.folds"] = folds
    return with_overrides(cfg, overrides, source="--set") if overrides else cfg


DATA_ARGS = (
    "visual_features",
    "audio_features",
    "text_features",
    "labels",
    "test_names",
    "trust_pickle",
)


def _data_options(cfg: Config, data_args: dict) -> DataOptions:
    folders = {m: data_args[f"{m}_features"] for m in ("visual", "audio", "text")}
    return DataOptions(
        folders=folders,
        classes=tuple(cfg.data.classes),
        labels=data_args["labels"],
        test_names=data_args["test_names"],
        trust_pickle=data_args["trust_pickle"],
    )


def data_options(f):
    """Options that say where the modalities and labels of a dataset are; the command
    receives them together as `data_args`."""

    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        kwargs["data_args"] = {k: kwargs.pop(k) for k in DATA_ARGS}
        return f(*args, **kwargs)

    wrapper = click.option(
        "--trust-pickle",
        is_flag=True,
        help="Allow reading label-6way.npz (it holds pickled objects).",
    )(wrapper)
    wrapper = click.option(
        "--test-names",
        type=click.Path(exists=True, dir_okay=False),
        help="Names kept apart as the test set.",
    )(wrapper)
    wrapper = click.option(
        "--labels", type=click.Path(), help="Label file (default: label-disdim.csv)."
    )(wrapper)
    wrapper = click.option("--text-features", default=DEFAULT_FOLDERS["text"], show_default=True)(
        wrapper
    )
    wrapper = click.option("--audio-features", default=DEFAULT_FOLDERS["audio"], show_default=True)(
        wrapper
    )
    wrapper = click.option(
        "--visual-features", default=DEFAULT_FOLDERS["visual"], show_default=True
    )(wrapper)
    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show the full traceback of an error.")
def cli(debug: bool) -> None:
    """mer-tune: hyperparameter search for semi-supervised multimodal emotion recognition
    (MR-CCL contrastive learning + self-training + weighted soft voting)."""


@cli.command()
@click.option("--data", "data_spec", help=DATA_HELP)
@click.option(
    "--config",
    "config_file",
    help="A config YAML (e.g. a search's best_config.yaml) or a shipped config: paper "
    "(the MERTools schedule, for a GPU).",
)
@click.option(
    "--set",
    "sets",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a config value, e.g. optim.lr=1e-4.",
)
@click.option(
    "--folds", type=click.IntRange(1, 20), help="Stratified folds (1 = an 80/20 hold-out)."
)
@click.option("--out", type=NonEmptyPath(file_okay=False), default="runs/latest", show_default=True)
@click.option("--device", type=click.Choice(["cpu", "cuda"]), help="Default: cuda when present.")
@data_options
def run(
    data_spec,
    config_file,
    sets,
    folds,
    out,
    device,
    data_args,
) -> None:
    """Train and evaluate one configuration with stratified k-fold; print the weighted F1.

    Writes OUT/metrics.json, OUT/val_predictions.csv and OUT/config.yaml."""
    from mer_tune.runner import run_config

    cfg = _config(config_file, sets, folds)
    opts = _data_options(cfg, data_args)
    with Progress() as progress:
        result = run_config(cfg, data_spec, Path(out), opts, report=progress, device=device)
    folds_text = ", ".join(f"{v:.4f}" for v in result.fold_f1)
    console.print(f"per fold: {folds_text}")
    added = sum(result.pseudo_added.values())
    prec = (
        f" (precision {result.pseudo_precision:.3f})" if result.pseudo_precision is not None else ""
    )
    console.print(f"pseudo-labels added: {added}{prec}; results in {out}", soft_wrap=True)
    click.echo(f"weighted F1 (mean over {len(result.fold_f1)} folds): {result.weighted_f1:.4f}")


@cli.command()
@click.option(
    "--config",
    "config_file",
    help="Config YAML, e.g. a search's best_config.yaml, or a shipped config (paper).",
)
@click.option("--data", "data_spec", help=DATA_HELP)
@click.option(
    "--out", type=NonEmptyPath(dir_okay=False), default="submission.csv", show_default=True
)
@click.option(
    "--folds",
    type=click.IntRange(1, 20),
    default=5,
    show_default=True,
    help="Fold models whose probabilities are averaged.",
)
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override a config value.")
@click.option(
    "--tracking-uri",
    callback=_non_empty,
    help="MLflow store (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db).",
)
@click.option("--device", type=click.Choice(["cpu", "cuda"]), help="Default: cuda when present.")
@data_options
def predict(config_file, data_spec, out, folds, sets, tracking_uri, device, data_args) -> None:
    """Train a configuration on all labelled data (k fold models, averaged) and write a
    MER2024 submission (columns name, discrete) for the test names."""
    from mer_tune.runner import predict_submission

    cfg = _config(config_file, sets, folds)
    with Progress() as progress:
        sub = predict_submission(
            cfg,
            data_spec,
            Path(out),
            _data_options(cfg, data_args),
            tracking_uri,
            report=progress,
            device=device,
        )
    click.echo(f"wrote {len(sub)} predictions to {out}")


@cli.group()
def data() -> None:
    """Create, check and pack datasets."""


@data.command()
@click.option("--out", required=True, type=NonEmptyPath(file_okay=False))
@click.option(
    "--scale", type=click.Choice(["tiny", "small", "full"]), default="tiny", show_default=True
)
@click.option("--seed", type=SEED, default=0, show_default=True)
def synth(out, scale, seed) -> None:
    """Write a synthetic MER-shaped dataset in the MERTools layout."""
    from mer_tune.data import synthetic as synth_module

    path = synth_module.write(out, scale, seed)
    click.echo(f"wrote {scale} synthetic dataset to {path}")


CLASSES_SET = click.option(
    "--set",
    "sets",
    multiple=True,
    metavar="KEY=VALUE",
    help="A config value; data.classes=[...] is the class list the labels are read with.",
)


@data.command()
@click.argument("folder", type=click.Path(exists=True, file_okay=False))
@CLASSES_SET
@data_options
def check(
    folder,
    sets,
    data_args,
) -> None:
    """Counts per class and split, dims per modality, and every problem found."""
    from mer_tune.data.checks import check_report

    opts = _data_options(_config(None, sets), data_args)
    text, ok = check_report(folder, opts)
    click.echo(text)
    if not ok:
        sys.exit(1)


@data.command(name="pack")
@click.argument("folder", type=click.Path(exists=True, file_okay=False))
@click.option("--force", is_flag=True, help="Rebuild even when the pack looks current.")
@CLASSES_SET
@data_options
def pack_cmd(
    folder,
    force,
    sets,
    data_args,
) -> None:
    """Pack a feature folder into memory-mappable arrays (done on first use anyway)."""
    from mer_tune.data.pack import load

    opts = _data_options(_config(None, sets), data_args)
    t0 = time.perf_counter()
    d = load(folder, opts, force=force)
    click.echo(
        f"packed {len(d.names)} samples ({d.nbytes() / 2**20:.1f} MiB) in {time.perf_counter() - t0:.1f}s"
    )


@cli.command()
@click.option(
    "--videos", required=True, type=NonEmptyPath(file_okay=False), help="Folder of clips."
)
@click.option("--out", required=True, type=NonEmptyPath(file_okay=False), help="Dataset folder.")
@click.option("--transcripts", type=click.Path(dir_okay=False), help="CSV with name + text.")
@click.option("--text-column", default="chinese", show_default=True)
@click.option("--faces", type=click.Path(file_okay=False), help="Face crops in FACES/<name>/.")
@click.option(
    "--visual", default=DEFAULT_MODELS["visual"], show_default=True, help="Hub id or folder."
)
@click.option(
    "--audio", default=DEFAULT_MODELS["audio"], show_default=True, help="Hub id or folder."
)
@click.option("--text", default=DEFAULT_MODELS["text"], show_default=True, help="Hub id or folder.")
@click.option(
    "--modalities", default="visual,audio,text", show_default=True, help="Comma-separated subset."
)
@click.option("--level", type=click.Choice(["utt", "frame"]), default="utt", show_default=True)
@click.option("--device", type=click.Choice(["cpu", "cuda"]), help="Default: cuda when present.")
@click.option(
    "--dtype",
    type=click.Choice(["auto", "float32", "float16", "bfloat16"]),
    default="auto",
    show_default=True,
    help="auto: float16 on a GPU, float32 on the CPU.",
)
@click.option("--batch-size", type=click.IntRange(1), default=32, show_default=True)
@click.option("--frames", type=click.IntRange(1), default=8, show_default=True, help="Per clip.")
@click.option("--device-map", help="For the text model, e.g. auto (needs accelerate).")
@click.option("--trust-visual-code", is_flag=True, help="Let the visual model run its own code.")
@click.option("--trust-audio-code", is_flag=True, help="Let the audio model run its own code.")
@click.option(
    "--trust-text-code",
    is_flag=True,
    help="Let the text model run its own code (Baichuan2 needs it).",
)
@click.option("--visual-revision", help="Pin the visual model to a hub revision (commit, tag).")
@click.option("--audio-revision", help="Pin the audio model to a hub revision.")
@click.option("--text-revision", help="Pin the text model to a hub revision.")
def extract(videos, out, transcripts, text_column, faces, modalities, **kw) -> None:
    """Extract MER2024 visual, audio and text features from raw clips into OUT/features/
    (existing outputs are skipped; a clip that fails is reported, the rest go on)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from mer_tune.data.extract import ExtractOptions
    from mer_tune.data.extract import extract as run_extract

    chosen = tuple(m.strip() for m in modalities.split(",") if m.strip())
    unknown = [m for m in chosen if m not in DEFAULT_MODELS]
    if unknown or not chosen:
        raise click.BadParameter(
            f"'{modalities}' (choose from visual,audio,text)", param_hint="--modalities"
        )
    models = {m: kw.pop(m) for m in ("visual", "audio", "text")}
    trusted = tuple(m for m in ("visual", "audio", "text") if kw.pop(f"trust_{m}_code"))
    revisions = {m: r for m in ("visual", "audio", "text") if (r := kw.pop(f"{m}_revision"))}
    opts = ExtractOptions(
        trust_remote_code=trusted,
        revisions=revisions,
        videos=Path(videos),
        out=Path(out),
        transcripts=Path(transcripts) if transcripts else None,
        faces=Path(faces) if faces else None,
        models=models,
        modalities=chosen,
        text_column=text_column,
        **kw,
    )
    columns = (
        *Progress.get_default_columns()[:1],
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
    )
    with contextlib.ExitStack() as stack:
        bars = []  # the bar starts with the first modality: a refusal before is one line

        def progress(label: str, total: int):
            if not bars:
                bars.append(stack.enter_context(Progress(*columns, console=console)))
            task = bars[0].add_task(label, total=total)
            return lambda: bars[0].advance(task)

        results = run_extract(opts, progress)
    if print_extract_summary(results, out):
        sys.exit(1)


@cli.command()
@click.option(
    "--space",
    default="thresholds",
    show_default=True,
    help="A shipped space (see `mer-tune spaces`) or a YAML file.",
)
@click.option("--trials", type=int, default=8, show_default=True)
@click.option("--data", "data_spec", help=DATA_HELP)
@click.option(
    "--config",
    "config_file",
    help="Base config YAML, or a shipped config: paper (the MERTools schedule, for a GPU).",
)
@click.option(
    "--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override a base config value."
)
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
@click.option(
    "--tracking-uri",
    callback=_non_empty,
    help="MLflow store (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db).",
)
@click.option(
    "--experiment",
    default="mer-tune",
    show_default=True,
    callback=_non_empty,
    help="MLflow experiment name.",
)
@click.option("--name", help="Name of this search (default: SPACE-DATE-TIME).")
@click.option("--no-cache", is_flag=True, help="Recompute every stage in every trial.")
@click.option(
    "--cache-dir",
    callback=_non_empty,
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
    "--share-features",
    is_flag=True,
    help="GPU trials on one card read one copy of the features (CUDA IPC from a holder "
    "per card) instead of each uploading its own.",
)
@data_options
def search(
    space,
    trials,
    data_spec,
    config_file,
    sets,
    folds,
    concurrency,
    cpus_per_trial,
    gpus_per_trial,
    scheduler,
    seed,
    address,
    storage,
    tracking_uri,
    experiment,
    name,
    no_cache,
    cache_dir,
    resume_name,
    trial_timeout,
    strategy,
    max_failures,
    holdout,
    holdout_seed,
    repeats,
    confirm_top,
    confirm_seeds,
    objectives,
    pick,
    from_searches,
    batch,
    share_features,
    data_args,
) -> None:
    """Search hyperparameters: Ray Tune runs the trials, Optuna suggests them, MLflow
    records each one as a nested run under the search's parent run.

    A stratified --holdout share of the labelled set is set aside first; trials select on
    the rest. At the end the --confirm-top best trials and the baseline (trial 0, the
    paper's values) are scored on the holdout, and a verdict says whether the winner
    beats the baseline. Writes STORAGE/NAME/results.csv, confirm.csv, verdict.json and
    best_config.yaml (loadable by `mer-tune run --config`)."""
    from mer_tune.hpo.staged import staged_search
    from mer_tune.hpo.tuner import resume
    from mer_tune.hpo.tuner import search as flat_search

    if resume_name is not None:
        _only_with_resume({"resume_name", "storage", "address"})
        _conclude(resume(resume_name, storage, address, on_event=SearchProgress(trials)))
        return

    run_search = staged_search if strategy == "staged" else flat_search
    extra = {}
    for option, value, key in (
        ("--from-search", from_searches, "from_searches"),
        ("--objective", objectives, "objectives"),
        ("--pick", pick, "pick"),
    ):
        if value:
            if strategy == "staged":
                raise click.BadParameter("not with --strategy staged", param_hint=option)
            extra[key] = value

    if trials < 1:
        raise click.BadParameter(f"{trials}: must be at least 1", param_hint="--trials")
    if holdout == 0:  # these would do nothing: refused rather than ignored
        for param in ("holdout_seed", "confirm_top", "confirm_seeds"):
            if _given(param):
                option = "--" + param.replace("_", "-")
                raise click.UsageError(f"{option} with --holdout 0: there is no holdout to use")
    cfg = _config(config_file, sets)
    opts = _data_options(cfg, data_args)
    with no_empty_folder_left(Path(storage).absolute()):
        res = run_search(
            space,
            trials,
            data_spec,
            config=cfg,
            folds=folds,
            concurrency=concurrency,
            cpus_per_trial=cpus_per_trial,
            gpus_per_trial=gpus_per_trial,
            scheduler=scheduler,
            seed=seed,
            address=address,
            storage=storage,
            tracking_uri=tracking_uri,
            experiment=experiment,
            name=name,
            cache=not no_cache,
            cache_dir=cache_dir,
            max_failures=max_failures,
            trial_timeout=trial_timeout,
            share_features=share_features,
            data_options=opts,
            repeats=repeats,
            holdout=holdout,
            holdout_seed=holdout_seed,
            confirm_top=confirm_top,
            confirm_seeds=confirm_seeds,
            batch=batch,
            on_event=SearchProgress(trials),
            **extra,
        )
    _conclude(res)


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


@cli.command()
@click.argument("name")
@click.option("--storage", type=NonEmptyPath(), default="mer-tune-runs", show_default=True)
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


@cli.command(name="confirm")
@click.argument("name")
@click.option("--storage", type=NonEmptyPath(), default="mer-tune-runs", show_default=True)
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


@cli.command(name="pick")
@click.argument("name")
@click.argument("expression")
@click.option("--storage", type=NonEmptyPath(), default="mer-tune-runs", show_default=True)
def pick_cmd(name, expression, storage) -> None:
    """Choose a point of the Pareto front of the multi-objective search NAME, e.g.
    'max weighted_f1 where min_class_f1>=0.6', and write it to best_config.yaml."""
    from mer_tune.hpo.folder import SearchFolder
    from mer_tune.hpo.front import repick

    trial, path = repick(SearchFolder.of(storage, name, "pick"), expression)
    click.echo(f"trial {trial} -> {path}")


@cli.command(name="config")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "yaml"]),
    default="table",
    show_default=True,
    help="yaml: a commented config file to start from (mer-tune config --format yaml > my.yaml).",
)
def config_cmd(fmt) -> None:
    """Every config key (as --set and search spaces name it), its default and what it does."""
    from mer_tune.method.config import commented_yaml, describe

    if fmt == "yaml":
        click.echo(commented_yaml(), nl=False)
        return
    for key, value, text in describe():
        click.echo(f"{key:34s} {str(value):22s} {text}")


@cli.command()
def spaces() -> None:
    """List the shipped search spaces with their parameters and ranges."""
    from mer_tune.hpo.spaces import available, load_space

    for name in available():
        sp = load_space(name)
        click.echo(f"{name}: {sp.description}")
        for key, text in sp.describe():
            click.echo(f"    {key:40s} {text}")
        for key, value in sp.fixed.items():
            click.echo(f"    {key:40s} fixed at {value}")


@cli.group()
def cache() -> None:
    """Inspect or clear a search's stage cache."""


def _cache_dir(storage: str, name: str, command: str) -> str:
    """Where search NAME keeps its stage cache (STORAGE/NAME/cache, or its --cache-dir),
    refused unless mer-tune made it (it carries mer-tune's marker)."""
    from mer_tune.hpo.cache import is_cache
    from mer_tune.hpo.folder import SearchFolder

    where = SearchFolder.of(storage, name, command).cache_dir()
    if not is_cache(where):
        raise MerTuneError(f"{where}: not a mer-tune stage cache (no marker); nothing touched")
    return where


@cache.command()
@click.argument("name")
@click.option("--storage", type=NonEmptyPath(), default="mer-tune-runs", show_default=True)
def info(name, storage) -> None:
    """Entries and size per stage in search NAME's cache, and refused (forged, unsigned or
    damaged) entries that were recomputed."""
    from mer_tune.hpo.cache import StageStore

    found = StageStore(_cache_dir(storage, name, "cache info")).info()
    for stage, e in sorted(found["stages"].items()):
        click.echo(f"{stage:10s} {e['entries']:5d} entries  {e['bytes'] / 2**20:8.1f} MiB")
    if not found["stages"]:
        click.echo("empty")
    click.echo(f"refused and recomputed: {found['rejected']}")


@cache.command()
@click.argument("name")
@click.option("--storage", type=NonEmptyPath(), default="mer-tune-runs", show_default=True)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def clear(name, storage, yes) -> None:
    """Delete every entry of search NAME's cache (only files mer-tune wrote there)."""
    from mer_tune.hpo.cache import StageStore

    where = _cache_dir(storage, name, "cache clear")
    if not yes:
        try:
            agreed = click.confirm(f"delete every stage cache entry in {where}?", err=True)
        except click.exceptions.Abort:
            if sys.stdin.isatty():
                raise  # Ctrl-C at the question
            raise click.UsageError(
                "no answer to read (stdin is not a terminal); add --yes"
            ) from None
        if not agreed:
            click.echo("nothing removed", err=True)
            sys.exit(1)
    click.echo(f"removed {StageStore(where).clear()} entries from {where}")


def _quiet_libraries(debug: bool = False) -> None:
    """MLflow's and Optuna's INFO lines would drown the progress output. A failed trial
    is one progress line, with its error in results.csv and its MLflow run: Tune's own
    report of it (a traceback per try) is left for --debug."""
    import logging
    import os

    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    for name in ("mlflow", "optuna", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    if not debug:
        for name in ("ray.tune.execution.tune_controller", "ray.tune.tune"):
            logging.getLogger(name).addFilter(_not_a_trial_failure)


def _not_a_trial_failure(record) -> bool:
    return not record.getMessage().startswith(
        ("Trial task failed for trial", "Trials did not complete")
    )


def _fast_exit() -> None:
    """Freeze the garbage collector's objects once everything else registered to run at
    exit has run (handlers run last-registered first): the interpreter then skips
    collecting what the OS frees anyway, 1.5 s after a search (benchmarks/RESULTS.md).
    Every file is written and closed before then."""
    import atexit
    import gc

    atexit.register(gc.freeze)


def _stop_ray() -> None:
    """The Ray this command started (or joined), stopped now: Ray's own exit hook first
    waits 0.5 s for its workers' last log lines, which this program never prints
    (ray_setup.init_ray: log_to_driver=False)."""
    import contextlib

    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        # A Ctrl-C here leaves it to Ray's exit hook.
        with contextlib.suppress(KeyboardInterrupt):
            ray.shutdown()


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors become one line on stderr and a non-zero exit code."""
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    if argv is None:  # the program itself, not a caller in the same process
        _fast_exit()
    from mer_tune.method.malloc import tune_malloc

    tune_malloc()
    _quiet_libraries(debug)
    try:
        cli.main(args=args, prog_name="mer-tune", standalone_mode=False)
    except SearchInterrupted as exc:
        click.echo(f"interrupted: {exc}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        console.print("aborted")
        sys.exit(130)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        if debug:
            raise
        click.echo(f"error: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    except MerTuneError as exc:
        if debug:
            raise
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    finally:
        if argv is None:
            _stop_ray()
