"""What every part of a running search reads and writes, held in one place: its folder
and record (search.yaml), the MLflow recorder, the results rows, the space, the base
config and where progress events go. The session (session.py) builds one; the runners
(runners.py, callback.py, batched.py) and the ending (ending.py) take it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from mer_tune.hpo.folder import SearchFolder
from mer_tune.hpo.objectives import OBJECTIVES
from mer_tune.hpo.record import SearchRecord
from mer_tune.hpo.spaces import Space
from mer_tune.hpo.tracking import SearchRecorder
from mer_tune.method.config import Config
from mer_tune.outputs import write_text


def no_events(kind: str, row: dict) -> None:
    """The progress events of a search run from Python without a listener."""


@dataclass
class SearchContext:
    folder: SearchFolder
    record: SearchRecord
    recorder: SearchRecorder
    space: Space
    base: Config
    rows: dict[str, dict]  # results.csv's rows by Tune trial id
    on_event: Callable[..., None] = no_events

    @property
    def path(self) -> Path:
        return self.folder.path

    @property
    def goals(self) -> list[str]:
        return list(self.record.objectives)

    @property
    def holders(self) -> str:
        """What names this search's card holders (card_features.py): its name and parent
        run, so that no other search (another --storage, an earlier search of the same
        name) shares them."""
        return f"{self.path.name}.{self.record.parent_run_id}"

    def update(self, **changes: Any) -> None:
        """The record changed and search.yaml rewritten."""
        self.record = self.record.replace(**changes)
        self.folder.write_record(self.record)

    def note(self, text: str) -> None:
        self.on_event("note", row={"text": text})

    def save_rows(self) -> pd.DataFrame:
        """results.csv from the rows (after every finished trial or batch, so that an
        interrupted search loses no result)."""
        return write_results(self.path, self.rows)

    @property
    def resume_command(self) -> str:
        return f"mer-tune search --resume {self.path.name} --storage {self.path.parent}"

    def resume_hint(self, what: str) -> str:
        return f"search {self.path.name} {what}; continue it with: {self.resume_command}"


def write_results(path: Path, rows: dict) -> pd.DataFrame:
    table = pd.DataFrame(sorted(rows.values(), key=lambda r: r["trial"]))
    if not table.empty and "weighted_f1" not in table:
        table["weighted_f1"] = float("nan")
    write_text(SearchFolder(path).results_file, table.to_csv(index=False))
    return table


def finished_fields(result: dict) -> tuple[dict, dict]:
    """(the MLflow metrics, the results-row fields) of a finished trial's final report,
    for a Tune trial and a batched one alike."""
    final = {
        k: v for k, v in result.items() if k.startswith(("f1_", "pseudo_", "seconds_", "fold"))
    }
    objectives = {k: result[k] for k in OBJECTIVES if result.get(k) is not None}
    seconds = [v for k, v in final.items() if k.startswith("seconds_")]
    fields = {"pipeline_seconds": round(sum(seconds), 4)}
    # Pseudo-labels per class that each self-training round trained on.
    fields |= {k: v for k, v in final.items() if k.startswith("pseudo_round")}
    return final | objectives, fields | objectives
