"""The CPU targets of a training step at the hardware's pace, this checkout against an
older one, measured side by side in one run (the two alternated, job by job).

    git worktree add /tmp/mer-base 48a2a24^ --detach   # before the fused step
    python benchmarks/cpu_targets.py --baseline /tmp/mer-base --reps 2

Each arm runs the commands a user runs, in a subprocess with PYTHONPATH at its tree:
  1. `mer-tune run --data synthetic:tiny --folds 1` (the default tiny trial), --reps times.
  2. `mer-tune search --space thresholds --data synthetic:tiny --trials 4 --concurrency 1`:
     trial 0 trains everything; trials 1-3 find pretraining and finetuning in the stage
     cache (a cached thresholds trial). Per-trial seconds are results.csv's `seconds`.
  3. `make run`'s search (`mer-tune search --space thresholds`: 8 trials on the built-in
     synthetic:small), --reps times: wall time, and trial 0's seconds over the cached
     trials' mean (the cache's saving per trial at small scale).
Where a search trains the stages every trial shares before its trials (search.yaml's
shared_stages), every trial is a cached one: that step's seconds are shown in trial 0's
place, and no trial-0 ratio is given for that arm.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import record
import yaml

HERE = Path(__file__).resolve().parents[1]


def _mer_tune(tree: Path, args: list[str]) -> float:
    env = os.environ | {"PYTHONPATH": str(tree)}
    where = subprocess.run(
        [sys.executable, "-c", "import mer_tune; print(mer_tune.__file__)"],
        env=env,
        cwd=tree,  # the working folder comes first on sys.path
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert Path(where).resolve().is_relative_to(tree.resolve()), f"{where} is not in {tree}"
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "mer_tune", *args]
    done = subprocess.run(cmd, env=env, cwd=tree, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"{' '.join(cmd[2:])} (in {tree}) failed:\n{done.stderr[-2000:]}")
    seconds = time.perf_counter() - t0
    print(f"  {tree.name}: mer-tune {' '.join(args[:3])}: {seconds:.1f} s", flush=True)
    return seconds


def _search(tree: Path, work: Path, extra: list[str]) -> tuple[float, pd.DataFrame, dict]:
    work.mkdir(parents=True)  # the sqlite store's folder must exist
    args = ["search", "--space", "thresholds", "--storage", str(work / "runs")]
    args += ["--tracking-uri", f"sqlite:///{work / 'mlflow.db'}", "--name", "bench", *extra]
    seconds = _mer_tune(tree, args)
    rows = pd.read_csv(work / "runs" / "bench" / "results.csv")
    state = yaml.safe_load((work / "runs" / "bench" / "search.yaml").read_text())
    return seconds, rows, state.get("shared_stages") or {}


def _cached(rows: pd.DataFrame, shared: dict) -> tuple[float, float]:
    """(trial 0's seconds, the median of the others': the cached trials; the median,
    because at concurrency 2 trial 1 starts beside trial 0 and finds nothing cached).
    With shared stages trained first: (their seconds, every trial's median)."""
    if shared:
        return float(shared["seconds"]), float(rows["seconds"].median())
    first = rows.loc[rows["trial"] == 0, "seconds"].iloc[0]
    return float(first), float(rows.loc[rows["trial"] != 0, "seconds"].median())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--baseline", required=True, help="an older checkout (a worktree)")
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--skip-make-run", action="store_true")
    parser.add_argument("--make-run-only", action="store_true")
    args = parser.parse_args()
    arms = {"baseline": Path(args.baseline), "current": HERE}
    work = Path(tempfile.mkdtemp(prefix="mer-tune-cpu-targets-"))
    out: dict[str, dict[str, list[float]]] = {arm: {} for arm in arms}

    shared_arms: dict[str, int] = {}  # arms that trained the shared stages first: threads

    def note(arm: str, key: str, value: float) -> None:
        out[arm].setdefault(key, []).append(value)

    for tree in arms.values():  # untimed: the built-in data generated and packed once
        warm = "from mer_tune.data.resolve import resolve; [resolve(f'synthetic:{s}') for s in ('tiny', 'small')]"
        env = os.environ | {"PYTHONPATH": str(tree)}
        subprocess.run([sys.executable, "-c", warm], env=env, cwd=tree, check=True)
    for rep in range(0 if args.make_run_only else args.reps):
        for arm, tree in arms.items():
            run = ["run", "--data", "synthetic:tiny", "--folds", "1"]
            note(arm, "run", _mer_tune(tree, [*run, "--out", str(work / f"{arm}-run{rep}")]))
    for arm, tree in arms.items() if not args.make_run_only else ():
        folder = work / f"{arm}-tiny"
        tiny = ["--data", "synthetic:tiny", "--trials", "4", "--concurrency", "1"]
        wall, rows, shared = _search(tree, folder, tiny)
        first, cached = _cached(rows, shared)
        shared_arms.update({arm: shared.get("threads")} if shared else {})
        note(arm, "tiny_search", wall)
        note(arm, "tiny_trial0", first)
        note(arm, "tiny_cached", cached)
    for rep in range(0 if args.skip_make_run else args.reps):
        for arm, tree in arms.items():
            wall, rows, shared = _search(tree, work / f"{arm}-make-run{rep}", [])
            first, cached = _cached(rows, shared)
            shared_arms.update({arm: shared.get("threads")} if shared else {})
            note(arm, "make_run", wall)
            note(arm, "small_trial0", first)
            note(arm, "small_cached", cached)
    shutil.rmtree(work, ignore_errors=True)

    labels = {
        "run": "mer-tune run --data synthetic:tiny --folds 1 (wall, mean of reps)",
        "tiny_search": "thresholds search, tiny, 4 trials (wall)",
        "tiny_trial0": "  its trial 0 (everything trained), or its shared stages first",
        "tiny_cached": "  a cached thresholds trial (median of trials 1-3)",
        "make_run": "make run's search (thresholds, 8 trials, synthetic:small; wall, mean of reps)",
        "small_trial0": "  its trial 0 (everything trained), or its shared stages first",
        "small_cached": "  a cached thresholds trial (median of trials 1-7)",
    }
    print(f"baseline: {arms['baseline']}; current: {HERE}")
    for key, label in labels.items():
        if key not in out["current"]:
            continue
        base = sum(out["baseline"][key]) / len(out["baseline"][key])
        cur = sum(out["current"][key]) / len(out["current"][key])
        runs = ", ".join(f"{v:.1f}" for v in out["current"][key])
        print(f"{label}: baseline {base:.1f} s, current {cur:.1f} s ({runs}), {base / cur:.2f}x")
    for arm, threads in shared_arms.items():
        print(f"{arm}: shared stages trained before the trials on {threads} threads")
    for arm in arms:
        if arm in shared_arms:
            continue  # every trial is a cached one: cache_speedup.py measures the ratio
        for scale in ("tiny", "small"):
            if f"{scale}_cached" in out[arm]:
                ratio = out[arm][f"{scale}_trial0"][0] / out[arm][f"{scale}_cached"][0]
                print(f"{arm}: {scale} trial 0 / cached trial = {ratio:.2f}x")


if __name__ == "__main__":
    record.run(main)
