"""Options several commands share, declared once, and what they turn into: a Config from
--config and --set, the DataOptions of a dataset's folders."""

from __future__ import annotations

import functools

import click

from mer_tune.data.layout import DEFAULT_FOLDERS, DataOptions
from mer_tune.method.config import (
    SEED_LIMIT,
    Config,
    build_config,
    load_config,
    parse_set_options,
    with_overrides,
)

SEED = click.IntRange(0, SEED_LIMIT - 1)  # what numpy and the config take


class NonEmptyPath(click.Path):
    """A path option that refuses '': as a path it means the current folder, where a
    command would then write (or overwrite) its files unasked."""

    def convert(self, value, param, ctx):
        if isinstance(value, str) and not value.strip():
            self.fail("an empty path; name a file or folder ('.' for this one)", param, ctx)
        return super().convert(value, param, ctx)


def non_empty(ctx, param, value):
    if isinstance(value, str) and not value.strip():
        raise click.BadParameter("must not be empty")
    return value


DATA_HELP = "A MERTools feature folder (a MER2024- or MER2025-SEMI release), or synthetic:tiny|small|full|mer2025 (default: the built-in synthetic:small)."

data_spec = click.option("--data", "data_spec", help=DATA_HELP)
storage = click.option("--storage", type=NonEmptyPath(), default="mer-tune-runs", show_default=True)
device = click.option(
    "--device", type=click.Choice(["cpu", "cuda"]), help="Default: cuda when present."
)
tracking_uri = click.option(
    "--tracking-uri",
    callback=non_empty,
    help="MLflow store (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db).",
)


def config_file(help: str):  # noqa: A002 - click's own keyword
    return click.option("--config", "config_file", help=help)


def sets(help: str):  # noqa: A002
    return click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help=help)


def config_from(config_file: str | None, sets: tuple[str, ...], folds: int | None = None) -> Config:
    """The config a command runs: --config (a file or a shipped name) or the defaults,
    then --set and --folds."""
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


def data_options_from(cfg: Config, data_args: dict) -> DataOptions:
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
    for modality in ("text", "audio", "visual"):
        wrapper = click.option(
            f"--{modality}-features", default=DEFAULT_FOLDERS[modality], show_default=True
        )(wrapper)
    return wrapper
