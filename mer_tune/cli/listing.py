"""`mer-tune config`, `spaces` and `cache info|clear`: what the tool ships and keeps."""

from __future__ import annotations

import sys

import click

from mer_tune.cli import options
from mer_tune.errors import MerTuneError


@click.command(name="config")
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


@click.command()
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


@click.group()
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
@options.storage
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
@options.storage
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
