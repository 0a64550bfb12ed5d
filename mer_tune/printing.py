"""What the commands print: live progress of a run or a search, the summary of a search
and of its confirm step (fitting the terminal), and the summary of an extraction."""

from __future__ import annotations

import time

import click
from rich.console import Console

from mer_tune.data.layout import DEFAULT_FOLDERS

console = Console(stderr=True, highlight=False, soft_wrap=True)


class Progress:
    """Prints stage starts and a live line per epoch."""

    def __init__(self) -> None:
        self.status = console.status("")
        self.started = time.perf_counter()

    def __call__(self, kind: str, **f) -> None:
        elapsed = time.perf_counter() - self.started
        if kind == "stage":
            console.print(f"[dim]{elapsed:6.1f}s[/dim] fold {f['fold']}: {f['stage']}")
        elif kind == "epoch":
            score = f.get("val_f1")
            text = f"fold {f['fold']} {f['stage']} epoch {f['epoch'] + 1}"
            text += (
                f"  val F1 {score:.4f}"
                if score is not None
                else f"  loss {f.get('pretrain_loss', 0):.4f}"
            )
            self.status.update(text)
        elif kind == "note":
            console.print(f"[yellow]note:[/yellow] {f['text']}")

    def __enter__(self) -> Progress:
        self.status.start()
        return self

    def __exit__(self, *exc) -> None:
        self.status.stop()


class SearchProgress:
    """Live counts of done / running / failed trials and the best score so far."""

    def __init__(self, trials: int) -> None:
        self.trials, self.done, self.failed, self.best = trials, 0, 0, None
        # Trials by id: a trial retried under --max-failures starts again without ending.
        self.live: set = set()

    @property
    def running(self) -> int:
        return len(self.live)

    def resumed(self, trials: int, rows: list[dict]) -> None:
        """Counts of a resumed search: its own number of trials, and the trials it kept."""
        self.trials = trials
        ended = [r for r in rows if r.get("status") in ("FINISHED", "PRUNED", "FAILED")]
        self.failed = sum(r["status"] == "FAILED" for r in ended)
        self.done = len(ended) - self.failed
        scores = [r["weighted_f1"] for r in ended if r["status"] == "FINISHED"]
        self.best = max(scores) if scores else None

    def __call__(self, kind: str, row: dict) -> None:
        if kind == "note":
            console.print(row["text"], markup=False)
            return
        if kind == "start":
            self.live.add(row.get("trial_id", row["trial"]))
            return
        if kind == "batch":  # a batch of trials, finished together: one line for all
            self._batch(row["rows"])
            return
        self.live.discard(row.get("trial_id", row["trial"]))
        if kind == "error":
            self.failed += 1
            what = f"[red]failed[/red]: {row.get('error', '')}"
        else:
            self.done += 1
            score = row.get("weighted_f1")
            if (
                row["status"] == "FINISHED"
                and score is not None
                and (self.best is None or score > self.best)
            ):
                self.best = score
            what = (
                f"{row['status'].lower()} F1 {score:.4f}"
                if score is not None
                else row["status"].lower()
            )
        best = f"{self.best:.4f}" if self.best is not None else "-"
        console.print(
            f"trial {row['trial']:3d} {what}  [dim]({row.get('seconds', 0):.0f}s)[/dim]   "
            f"done {self.done}/{self.trials}, running {self.running}, failed {self.failed}, best {best}"
        )

    def _batch(self, rows: list[dict]) -> None:
        finished = [r for r in rows if r["status"] == "FINISHED"]
        self.done += len(finished)
        self.failed += len(rows) - len(finished)
        scores = [r["weighted_f1"] for r in finished] + (
            [self.best] if self.best is not None else []
        )
        self.best = max(scores) if scores else self.best
        best = f"{self.best:.4f}" if self.best is not None else "-"
        first, last = rows[0]["trial"], rows[-1]["trial"]
        what = f"trial {first:3d}" if first == last else f"trials {first}-{last}"
        seconds = sum(r.get("seconds", 0) for r in rows)
        errors = [r["error"] for r in rows if r.get("error")]
        failed = f" [red]failed[/red]: {errors[-1]}" if errors else ""
        console.print(
            f"{what} batched{failed} [dim]({seconds:.1f}s)[/dim]   "
            f"done {self.done}/{self.trials}, failed {self.failed}, best {best}"
        )


def front_table(front):
    """The Pareto front of a multi-objective search: trial and each objective."""
    from rich.table import Table

    table = Table(
        title="Pareto front", pad_edge=False, padding=(0, 1), box=None, title_justify="left"
    )
    goals = [c for c in front.columns if c != "trial" and "." not in c]
    for col in ["trial", *goals]:
        table.add_column(col, no_wrap=True)
    for row in front.to_dict("records"):
        table.add_row(_cell(row["trial"]), *[_cell(row[g], 4) for g in goals])
    return table


def top_trials_table(results, width: int, top: int = 10):
    """The best trials in a table that fits `width` columns without wrapping a cell:
    trial, score, status, seconds and the parameters that vary (the last part of their
    path, cut to 10 characters); what does not fit is named below it. The full table is
    results.csv and `mer-tune report`."""
    from rich.table import Table

    table = Table(
        title="top trials", pad_edge=False, padding=(0, 1), box=None, title_justify="left"
    )
    fixed = [("trial", "trial"), ("weighted_f1", "F1"), ("status", "status"), ("seconds", "s")]
    fixed = [(c, h) for c, h in fixed if c in results]
    params = [c for c in results.columns if "." in c and results[c].nunique(dropna=True) > 1]
    room = max(0, (width - 32) // 9)  # the fixed columns take ~32, a parameter ~9
    shown, left_out = params[:room], params[room:]
    for _, head in fixed:
        table.add_column(head, no_wrap=True)
    for col in shown:
        table.add_column(_header(col, shown), no_wrap=True, max_width=10)
    rows = results.sort_values("weighted_f1", ascending=False, na_position="last").head(top)
    for row in rows.to_dict("records"):
        cells = [_cell(row.get(c), 4 if c == "weighted_f1" else None) for c, _ in fixed]
        table.add_row(*cells, *[_cell(row.get(c)) for c in shown])
    if left_out:
        table.caption = f"+{len(left_out)} more parameters in results.csv"
    return table


def _header(key: str, keys: list[str]) -> str:
    """The last part of a config path, with the first letter of the part before it when
    another shown key ends the same (timesteps.audio -> t.audio, weights.audio -> w.audio)."""
    parts = key.split(".")
    if sum(k.rsplit(".", 1)[-1] == parts[-1] for k in keys) > 1 and len(parts) > 1:
        return f"{parts[-2][0]}.{parts[-1]}"[:10]
    return parts[-1][:10]


def _cell(value, digits: int | None = None) -> str:
    if isinstance(value, float):
        if value != value:
            return "-"
        return f"{value:.{digits}f}" if digits else f"{value:.3g}"
    return str(value)[:10] if value is not None else "-"


def print_summary(res) -> None:
    console.print(f"search {res.path.name}")
    table = top_trials_table(res.results, console.width)
    console.print(table)
    front_file = res.path / "pareto.csv"
    if front_file.exists():
        import pandas as pd

        console.print(front_table(pd.read_csv(front_file)))
    console.print(f"results: {res.path / 'results.csv'}", soft_wrap=True)
    if res.best_config is not None:
        console.print(
            f"best config: {res.path / 'best_config.yaml'}  (mer-tune run --config ...)",
            soft_wrap=True,
        )
    console.print(f"browse the trials: {res.ui_command}", soft_wrap=True)
    score = f"{res.best_score:.4f}" if res.best_score is not None else "none (every trial failed)"
    click.echo(f"best weighted F1 (inner, what the search selected on): {score}")
    if res.confirm is not None:
        print_confirm(res.confirm, res.holdout_size)
    for note in res.notes:
        console.print(f"[yellow]note:[/yellow] {note}", soft_wrap=True)
    if res.verdict is not None:
        click.echo(f"verdict: {res.verdict.text}")


def print_confirm(table, holdout_size: int) -> None:
    """Two short lines per confirmed trial: inner and holdout score (95% interval) and the
    optimism gap; then the gain over the baseline, the retrained spread, the truth."""
    click.echo(f"confirmed on the outer holdout ({holdout_size} samples no trial saw):")
    for row in table.to_dict("records"):
        roles = ["baseline"] if row["role"] == "baseline" else []
        roles += ["adopted"] if row.get("adopted") else []
        click.echo(f"  trial {int(row['trial'])}" + (f" ({', '.join(roles)})" if roles else ""))
        click.echo(
            f"      inner {row['inner_f1']:.3f}  holdout {row['holdout_f1']:.3f} "
            f"({row['holdout_low']:.3f}-{row['holdout_high']:.3f})  "
            f"gap {row['optimism_gap']:+.3f}"
        )
        extra = []
        if _present(row.get("gain_vs_baseline")):
            extra.append(
                f"vs baseline {row['gain_vs_baseline']:+.3f} "
                f"({row['gain_low']:+.3f} to {row['gain_high']:+.3f})"
            )
        if _present(row.get("p_adjusted")):
            extra.append(f"adjusted p {row['p_adjusted']:.3f}")
        if _present(row.get("retrained_f1")):
            extra.append(f"retrained {row['retrained_f1']:.3f} ± {row['retrained_sd']:.3f}")
        if _present(row.get("truth_f1")):
            extra.append(f"truth {row['truth_f1']:.3f}")
        line = ""
        for part in extra:  # as many as fit in 80 columns on a line
            if line and len(line) + 2 + len(part) > 74:
                click.echo("      " + line)
                line = ""
            line = f"{line}  {part}" if line else part
        if line:
            click.echo("      " + line)


def _present(value) -> bool:
    return value is not None and value == value  # NaN is absent


def print_extract_summary(results, out) -> int:
    """Per modality: written, skipped, failed, removed, notes; the `data check` hint.
    Returns the number of failed extractions."""
    failed = 0
    hints = []
    for r in results:
        rate = (
            f", {r.written / r.seconds:.1f} clips/s after a {r.load_seconds:.1f} s model load"
            if r.seconds and r.written
            else ""
        )
        click.echo(
            f"{r.modality:6s} {r.folder}: {r.written} written, {r.skipped} already there, "
            f"{len(r.failed)} failed (dim {r.dim or '-'}{rate})"
        )
        if r.dropped:
            click.echo(
                f"  removed {len(r.dropped)} clips that failed in another modality "
                f"({', '.join(r.dropped[:5])}{', ...' if len(r.dropped) > 5 else ''}): "
                "a clip is written in every modality or in none"
            )
        for note, count in r.notes.items():
            click.echo(f"  note: {note} ({count} clips)")
        for name, why in list(r.failed.items())[:20]:
            click.echo(f"  failed {name}: {why}")
        if len(r.failed) > 20:
            click.echo(f"  ... and {len(r.failed) - 20} more")
        failed += len(r.failed)
        if r.folder.name != DEFAULT_FOLDERS[r.modality]:
            hints.append(f"--{r.modality}-features {r.folder.name}")
    if hints:
        click.echo(f"read it with: mer-tune data check {out} {' '.join(hints)}")
    if failed:
        click.echo(f"error: {failed} extractions failed (rerun to retry them)", err=True)
    return failed
