"""`mer-tune data synth|check|pack` and `mer-tune extract`: make and read datasets."""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path

import click

from mer_tune.cli import options
from mer_tune.cli.options import SEED, NonEmptyPath, config_from, data_options_from
from mer_tune.data.layout import DEFAULT_MODELS
from mer_tune.data.scenarios import names as preset_names
from mer_tune.printing import console, print_extract_summary

BASE_SCALES = ["tiny", "small", "full", "mer2025"]
SCALES = BASE_SCALES + preset_names(BASE_SCALES)
CLASSES_SET = options.sets(
    "A config value; data.classes=[...] is the class list the labels are read with."
)


@click.group()
def data() -> None:
    """Create, check and pack datasets."""


@data.command()
@click.option("--out", required=True, type=NonEmptyPath(file_okay=False))
@click.option(
    "--scale",
    type=click.Choice(SCALES),
    default="tiny",
    show_default=True,
    help="mer2025: MER2025-SEMI Track 1's size (7,369 labelled, 20,000 candidates). "
    "SCALE+PRESET: a scenario with a known answer (README, 'Does a search pay?').",
)
@click.option(
    "--layout",
    type=click.Choice(["mer2024", "mer2025"]),
    help="Whose release files to write: mer2024 (label-disdim.csv, test-names.csv) or "
    "mer2025 (track1_train_disdim.csv, track_all_candidates.csv); default: the scale's.",
)
@click.option("--seed", type=SEED, default=0, show_default=True)
def synth(out, scale, layout, seed) -> None:
    """Write a synthetic MER-shaped dataset in the MERTools layout."""
    from mer_tune.data import synthetic

    release = {"mer2024": "MER2024-SEMI", "mer2025": "MER2025-SEMI"}.get(layout)
    path = synthetic.write(out, scale, seed, release)
    click.echo(f"wrote {scale} synthetic dataset to {path}")


@data.command()
@click.argument("folder", type=click.Path(exists=True, file_okay=False))
@CLASSES_SET
@options.data_options
def check(folder, sets, data_args) -> None:
    """Counts per class and split, dims per modality, and every problem found."""
    from mer_tune.data.checks import check_report

    opts = data_options_from(config_from(None, sets), data_args)
    text, ok = check_report(folder, opts)
    click.echo(text)
    if not ok:
        sys.exit(1)


@data.command(name="pack")
@click.argument("folder", type=click.Path(exists=True, file_okay=False))
@click.option("--force", is_flag=True, help="Rebuild even when the pack looks current.")
@CLASSES_SET
@options.data_options
def pack_cmd(folder, force, sets, data_args) -> None:
    """Pack a feature folder into memory-mappable arrays (done on first use anyway)."""
    from mer_tune.data.pack import load

    opts = data_options_from(config_from(None, sets), data_args)
    t0 = time.perf_counter()
    d = load(folder, opts, force=force)
    click.echo(
        f"packed {len(d.names)} samples ({d.nbytes() / 2**20:.1f} MiB) in {time.perf_counter() - t0:.1f}s"
    )


@click.command()
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
@options.device
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
    with _progress_bars() as progress:
        results = run_extract(opts, progress)
    if print_extract_summary(results, out):
        sys.exit(1)


@contextlib.contextmanager
def _progress_bars():
    """A factory of progress bars, one per modality; the bars start with the first, so a
    refusal before it is the error line alone."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    columns = (
        *Progress.get_default_columns()[:1],
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
    )
    with contextlib.ExitStack() as stack:
        bars = []

        def progress(label: str, total: int):
            if not bars:
                bars.append(stack.enter_context(Progress(*columns, console=console)))
            task = bars[0].add_task(label, total=total)
            return lambda: bars[0].advance(task)

        yield progress
