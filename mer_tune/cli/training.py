"""`mer-tune run` and `mer-tune predict`: train one configuration."""

from __future__ import annotations

from pathlib import Path

import click

from mer_tune.cli import options
from mer_tune.cli.options import NonEmptyPath, config_from, data_options_from
from mer_tune.printing import Progress, console


@click.command()
@options.data_spec
@options.config_file(
    "A config YAML (e.g. a search's best_config.yaml) or a shipped config: paper "
    "(the MERTools schedule, for a GPU)."
)
@options.sets("Override a config value, e.g. optim.lr=1e-4.")
@click.option(
    "--folds", type=click.IntRange(1, 20), help="Stratified folds (1 = an 80/20 hold-out)."
)
@click.option("--out", type=NonEmptyPath(file_okay=False), default="runs/latest", show_default=True)
@options.device
@options.data_options
def run(data_spec, config_file, sets, folds, out, device, data_args) -> None:
    """Train and evaluate one configuration with stratified k-fold; print the weighted F1.

    Writes OUT/metrics.json, OUT/val_predictions.csv and OUT/config.yaml."""
    from mer_tune.runner import run_config

    cfg = config_from(config_file, sets, folds)
    opts = data_options_from(cfg, data_args)
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


@click.command()
@options.config_file("Config YAML, e.g. a search's best_config.yaml, or a shipped config (paper).")
@options.data_spec
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
@options.sets("Override a config value.")
@options.tracking_uri
@options.device
@options.data_options
def predict(config_file, data_spec, out, folds, sets, tracking_uri, device, data_args) -> None:
    """Train a configuration on all labelled data (k fold models, averaged) and write a
    MER2024 submission (columns name, discrete) for the test names."""
    from mer_tune.runner import predict_submission

    cfg = config_from(config_file, sets, folds)
    with Progress() as progress:
        sub = predict_submission(
            cfg,
            data_spec,
            Path(out),
            data_options_from(cfg, data_args),
            tracking_uri,
            report=progress,
            device=device,
        )
    click.echo(f"wrote {len(sub)} predictions to {out}")
