"""The `mer-tune` command line, one module per command group: searching.py (search,
report, confirm, pick), training.py (run, predict), datasets.py (data, extract),
listing.py (config, spaces, cache). Shared options are declared once in options.py; the
program's plumbing (exit codes, quiet libraries, stopping Ray) is in process.py. Each
command parses its options, calls one function and prints."""

from __future__ import annotations

import click

from mer_tune.cli import datasets, listing, searching, training
from mer_tune.cli.process import run_program


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show the full traceback of an error.")
def cli(debug: bool) -> None:
    """mer-tune: hyperparameter search for semi-supervised multimodal emotion recognition
    (MR-CCL contrastive learning + self-training + weighted soft voting)."""


# In the order `mer-tune --help` lists them (alphabetical, as click sorts a group).
for command in (
    training.run,
    training.predict,
    datasets.data,
    datasets.extract,
    searching.search,
    searching.report,
    searching.confirm_cmd,
    searching.pick_cmd,
    listing.config_cmd,
    listing.spaces,
    listing.cache,
):
    cli.add_command(command)


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors become one line on stderr and a non-zero exit code."""
    run_program(cli, argv)
