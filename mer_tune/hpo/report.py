"""What a finished search shows: plots for MLflow, and `mer-tune report`."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mer_tune.errors import MerTuneError
from mer_tune.hpo.folder import damaged
from mer_tune.hpo.tracking import redact


def confusion_png(matrix: list[list[int]], classes: list[str], path: Path) -> Path:
    """A confusion-matrix image (rows: true class, columns: predicted)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = np.asarray(matrix)
    fig, ax = plt.subplots(figsize=(5, 4.5))
    ax.imshow(m, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            ax.text(
                j,
                i,
                int(m[i, j]),
                ha="center",
                va="center",
                color="white" if m[i, j] > m.max() / 2 else "black",
            )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def confirm_png(table: pd.DataFrame, path: Path) -> Path:
    """Inner score against holdout score of the confirmed trials, with the holdout's
    95% intervals; on the diagonal, the holdout agrees with the search."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 5))
    for _, row in table.iterrows():
        color = "tab:gray" if row["role"] == "baseline" else "tab:blue"
        if row.get("adopted"):
            color = "tab:green"
        err = [[row["holdout_f1"] - row["holdout_low"]], [row["holdout_high"] - row["holdout_f1"]]]
        ax.errorbar(row["inner_f1"], row["holdout_f1"], yerr=err, fmt="o", color=color, capsize=3)
        label = f"trial {int(row['trial'])}" + (" (baseline)" if row["role"] == "baseline" else "")
        ax.annotate(
            label,
            (row["inner_f1"], row["holdout_f1"]),
            xytext=(4, 4),
            textcoords="offset points",
            fontsize=8,
        )
    lo = float(min(table["inner_f1"].min(), table["holdout_low"].min())) - 0.01
    hi = float(max(table["inner_f1"].max(), table["holdout_high"].max())) + 0.01
    ax.plot([lo, hi], [lo, hi], color="lightgray", lw=1, zorder=0)
    ax.set_xlabel("inner weighted F1 (what the search selected on)")
    ax.set_ylabel("outer holdout weighted F1, 95% interval")
    ax.set_title("confirmed trials (green: adopted)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def study_plots(study, out: Path, goals: list[str] | None = None) -> list[Path]:
    """Optuna's parameter-importance, optimisation-history and parallel-coordinate plots as
    PNG files (of the first objective), and with several objectives the Pareto front; a
    plot Optuna cannot draw for this study (too few trials) is left out."""
    import matplotlib
    import optuna

    if not study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        return []  # nothing to draw (every trial failed); Optuna would warn three times
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    goals = goals or ["weighted_f1"]
    first = {}
    draws = []
    if len(goals) > 1:
        first = {"target": lambda t: t.values[0], "target_name": goals[0]}
        if len(goals) <= 3:
            draws.append(("pareto_front", lambda s: ovm.plot_pareto_front(s, target_names=goals)))
    # Importance evaluators assume a target to minimise: a maximised objective is negated.
    ranked = {}
    if first:
        sign = -1.0 if study.directions[0].name == "MAXIMIZE" else 1.0
        ranked = {"target": lambda t: sign * t.values[0], "target_name": goals[0]}
    draws += [
        ("param_importances", lambda s: ovm.plot_param_importances(s, **ranked)),
        ("optimization_history", lambda s: ovm.plot_optimization_history(s, **first)),
        ("parallel_coordinate", lambda s: ovm.plot_parallel_coordinate(s, **first)),
    ]
    made = []
    for name, draw in draws:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Optuna marks these plots experimental
                ax = draw(study)
            fig = ax.figure if hasattr(ax, "figure") else np.ravel(ax)[0].figure
            fig.set_size_inches(8, 5)
            fig.tight_layout()
            fig.savefig(out / f"{name}.png", dpi=100)
            plt.close(fig)
            made.append(out / f"{name}.png")
        except (ValueError, RuntimeError, ZeroDivisionError, IndexError):
            plt.close("all")
    return made


def importances(study) -> dict[str, float]:
    import optuna

    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if len(complete) < 2:
        return {}
    # Of the first objective, in a multi-objective study (negated when maximised: the
    # evaluators rank what lowers their target).
    first = {}
    if len(study.directions) > 1:
        sign = -1.0 if study.directions[0].name == "MAXIMIZE" else 1.0
        first = {"target": lambda t: sign * t.values[0]}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Optuna's notes on its evaluators, not ours
            return dict(optuna.importance.get_param_importances(study, **first))
    except (ValueError, RuntimeError, ZeroDivisionError):
        return {}


def _study(db: Path, name: str):
    """The search's Optuna study (for the importances), None where there is none."""
    import optuna
    from sqlalchemy.exc import DatabaseError

    if not db.exists():
        return None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = f"sqlite:///{db}"
    try:
        try:
            return optuna.load_study(study_name=name, storage=storage)
        except KeyError:  # a renamed or copied folder: its one study keeps the first name
            return optuna.load_study(study_name=None, storage=storage)
    except ValueError:
        raise MerTuneError(
            f"{db}: no study named {name} and not exactly one study to read instead"
        ) from None
    except DatabaseError:
        raise damaged(db, "not an SQLite database") from None


def build_report(name: str, storage: str | Path = "mer-tune-runs", top: int = 5) -> dict[str, Any]:
    """The top trials, best config, parameter importances, failures and plot locations."""
    from mer_tune.hpo.folder import SearchFolder, read_table, storage_root
    from mer_tune.hpo.record import SearchRecord

    folder = SearchFolder.named(storage_root(storage), name, "report")
    path = folder.path
    table = folder.required_results()
    record = folder.record() if folder.state_file.exists() else SearchRecord()
    study = _study(folder.study_db, name)
    finished = table[table["status"] == "FINISHED"].sort_values("weighted_f1", ascending=False)
    failed = table[table["status"] == "FAILED"]
    best = folder.best_file
    from mer_tune.hpo.confirm import read as read_confirm

    confirmed = read_confirm(path)
    front_file = path / "pareto.csv"
    front = read_table(front_file).to_dict("records") if front_file.exists() else None
    return {
        "search": name,
        "path": str(path),
        "trials": len(table),
        "finished": len(finished),
        "failed": len(failed),
        "best_weighted_f1": float(finished["weighted_f1"].iloc[0]) if len(finished) else None,
        "best_config": str(best) if best.exists() else None,
        "top": finished.head(top).drop(columns=["trial_id"], errors="ignore").to_dict("records"),
        "importances": importances(study) if study is not None else {},
        "failures": failed[["trial", "error"]].to_dict("records") if "error" in failed else [],
        "plots": sorted(str(p) for p in folder.plots.glob("*.png")),
        "mlflow": {
            "tracking_uri": redact(record.tracking_uri),
            "parent_run_id": record.parent_run_id,
        },
        "holdout_size": record.holdout_size,
        "objectives": list(record.objectives),
        "pareto": front,
        "confirm": None
        if confirmed is None
        else {"trials": confirmed[0].to_dict("records"), "verdict": confirmed[1]},
    }


def format_report(report: dict[str, Any], fmt: str, section: str = "top") -> str:
    if fmt == "json":
        return json.dumps(report, indent=2, default=str)
    if fmt == "csv":
        if section == "confirm":
            if report["confirm"] is None:
                raise MerTuneError(f"{report['search']}: no confirm step ran for this search")
            return pd.DataFrame(report["confirm"]["trials"]).to_csv(index=False)
        if section == "pareto":
            if report["pareto"] is None and len(report["objectives"]) > 1:
                raise MerTuneError(
                    f"{Path(report['path']) / 'pareto.csv'}: missing (did the search finish?)"
                )
            if report["pareto"] is None:
                raise MerTuneError(f"{report['search']}: not a multi-objective search: no front")
            return pd.DataFrame(report["pareto"]).to_csv(index=False)
        return pd.DataFrame(report["top"]).to_csv(index=False)
    lines = [
        f"search {report['search']}: {report['finished']} finished, {report['failed']} failed "
        f"of {report['trials']} trials"
    ]
    if report["best_weighted_f1"] is not None:
        lines.append(
            f"best weighted F1: {report['best_weighted_f1']:.4f}   config: {report['best_config']}"
        )
    lines.append("top trials:")
    lines.append(pd.DataFrame(report["top"]).to_string(index=False) if report["top"] else "  none")
    if report["importances"]:
        lines.append("parameter importances:")
        lines += [f"  {k:40s} {v:.3f}" for k, v in report["importances"].items()]
    for f in report["failures"]:
        lines.append(f"failed trial {f['trial']}: {f['error']}")
    if report["pareto"] is not None:
        lines.append(f"Pareto front of {', '.join(report['objectives'])}:")
        lines.append(pd.DataFrame(report["pareto"]).to_string(index=False))
    if report["confirm"] is not None:
        lines.append(f"confirmed on the outer holdout ({report['holdout_size']} samples):")
        lines.append(pd.DataFrame(report["confirm"]["trials"]).to_string(index=False))
        lines.append(f"verdict: {report['confirm']['verdict']['text']}")
    elif not report["holdout_size"]:
        lines.append(
            "no outer holdout: the best weighted F1 is optimistic (chosen on its own data)"
        )
    if report["plots"]:
        lines.append("plots: " + ", ".join(report["plots"]))
    return "\n".join(lines)
