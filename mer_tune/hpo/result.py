"""What a search returns: its results table, best config and, after the confirm step,
the holdout table and verdict. Imports neither the session nor the confirm step, so both
can build one."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from mer_tune.hpo.stats import Verdict
from mer_tune.hpo.tracking import ui_command
from mer_tune.method.config import Config


@dataclass
class SearchResult:
    results: pd.DataFrame  # one row per trial
    best_config: Config | None
    best_score: float | None
    path: Path  # the search's folder under --storage
    experiment_id: str
    parent_run_id: str
    tracking_uri: str
    # The confirm step (None when the search has no outer holdout): one row per
    # confirmed trial (inner and holdout scores, optimism gap, gain over the baseline).
    confirm: pd.DataFrame | None = None
    verdict: Verdict | None = None
    holdout_size: int = 0
    notes: list[str] = field(default_factory=list)
    pick_error: str | None = None  # --pick met by no point of the front (the front is kept)

    @property
    def ui_command(self) -> str:
        return ui_command(self.tracking_uri, self.experiment_id)
