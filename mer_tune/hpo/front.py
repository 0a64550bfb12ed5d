"""The Pareto front of a multi-objective search, written where a user looks for it.

STORAGE/NAME/pareto.csv (one row per front point: its trial, objectives and values),
STORAGE/NAME/pareto/trial-NNN.yaml (each point's config, loadable by `mer-tune run
--config`), and best_config.yaml only for the point --pick (or `mer-tune pick`) chose.
The same files go to the MLflow parent run.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd

from mer_tune.errors import UsageError
from mer_tune.hpo import objectives
from mer_tune.hpo.folder import SearchFolder, read_table
from mer_tune.hpo.spaces import Space, trial_config
from mer_tune.method.config import Config
from mer_tune.outputs import write_text

FRONT_FILE = "pareto.csv"
FRONT_DIR = "pareto"


def table(results: pd.DataFrame, goals: list[str], sp: Space) -> pd.DataFrame:
    """The front as pareto.csv holds it: trial, objectives, then the searched values."""
    points = objectives.pareto_front(results, goals)
    params = [k for k in sp.params if k in points.columns]
    return points[["trial", *goals, *params]].reset_index(drop=True)


def write(
    path: Path,
    results: pd.DataFrame,
    goals: list[str],
    pick: str | None,
    sp: Space,
    base: Config,
    recorder,
) -> tuple[Config | None, list[str]]:
    """Write the front and its configs; return the picked config (or None) and notes
    for the summary (a pick no point meets is a note, and the front is kept)."""
    points = table(results, goals, sp)
    write_text(path / FRONT_FILE, points.to_csv(index=False))
    folder = path / FRONT_DIR
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    for row in points.to_dict("records"):
        cfg = trial_config(base, {k: row[k] for k in sp.params if k in row})
        write_text(folder / f"trial-{int(row['trial']):03d}.yaml", cfg.to_yaml())
    goals_text = ", ".join(f"{g} ({objectives.OBJECTIVES[g]})" for g in goals)
    notes = [
        f"{len(points)} trial(s) on the Pareto front of {goals_text}: "
        f"{path / FRONT_FILE}, their configs in {folder}/"
    ]
    best_file = SearchFolder(path).best_file
    best_file.unlink(missing_ok=True)  # only a pick writes it
    picked = None
    if pick:
        try:
            picked, trial = choose(path, points, goals, pick, sp, base)
            notes.append(f"--pick {pick!r}: trial {trial} -> {best_file}")
        except UsageError as err:
            notes.append(str(err))
    else:
        notes.append(
            "choose one with --pick, or later: mer-tune pick NAME 'max OBJECTIVE where ...'"
        )
    recorder.log_artifact(recorder.parent_id, path / FRONT_FILE)
    recorder.log_artifacts(recorder.parent_id, folder, FRONT_DIR)
    recorder.log_parent_metrics({"pareto_points": len(points)})
    recorder.set_tags(
        recorder.parent_id,
        {"mer_tune.pareto_trials": ",".join(str(int(t)) for t in points["trial"])},
    )
    if picked is not None:
        recorder.log_artifact(recorder.parent_id, best_file)
    return picked, notes


def choose(
    path: Path, points: pd.DataFrame, goals: list[str], pick: str, sp: Space, base: Config
) -> tuple[Config, int]:
    """The front point `pick` asks for, written to best_config.yaml; raises UsageError
    (naming the closest point) when none meets its conditions."""
    row = objectives.apply_pick(points, objectives.parse_pick(pick, goals))
    cfg = trial_config(base, {k: row[k] for k in sp.params if k in row})
    write_text(SearchFolder(path).best_file, cfg.to_yaml())
    return cfg, int(row["trial"])


def repick(folder: SearchFolder, pick: str) -> tuple[int, Path]:
    """`mer-tune pick NAME EXPR`: choose again from a finished multi-objective search."""
    goals = list(folder.record().objectives)
    if len(goals) < 2:
        raise UsageError(f"{folder.name}: a single-objective search has no Pareto front")
    if not (folder.path / FRONT_FILE).exists():
        raise UsageError(f"{folder.name}: no Pareto front yet (did the search finish?)")
    base = folder.base()
    points = read_table(folder.path / FRONT_FILE, ("trial", *goals), ("trial", *goals))
    _, trial = choose(folder.path, points, goals, pick, folder.space(base), base)
    return trial, folder.best_file
