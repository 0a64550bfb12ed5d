"""Does a search pay? Search arms given the same wall-clock budget, scored on the truth.

    python benchmarks/search_value.py --scenario gain --budget 120 --replicates 5
    python benchmarks/search_value.py --scenario null --budget 120 --replicates 5 \
        --set pretrain.epochs=3 --set finetune.epochs=5

Each replicate seed r draws one holdout, shared by every arm (all take --seed r), and
every arm's trial 0 is the paper's config with that seed: the same model wherever it
trains on the same number of threads (the batched arms and the plain loop agree bit for
bit; a `--no-cache` trial trains on one thread and differs). Each arm then searches until the budget runs out: a timer sends
the process a Ctrl-C at `--budget` seconds, as a user stopping the search would, and
only trials that finished by then count. Ray is started before the clock starts.

Arms:
- default: `mer-tune search` as shipped (TPE; batched trials and the stage cache where
  the space allows them);
- gp, cmaes, random: the same with `--sampler` (random is random search);
- no-cache: `--no-cache` (every trial trains from scratch in its own Ray Tune trial);
- plain: a plain Optuna loop in this process: `study.ask()`, the same pipeline
  function (`pipeline.run`) on the same data with the holdout withheld, `study.tell()`,
  one trial at a time on every core, no cache, no batching, no Ray.

Each arm's trials are judged by mer-tune's verdict (confirm the top 3 on the holdout,
Holm-adjusted; confirm.confirm) on the trials done by each checkpoint; the plain loop
is also shown with the rule a plain loop uses (adopt the best inner score). Printed
per arm: the truth F1 gain of the adopted config over the baseline (0 when it keeps
the baseline; mean and spread over replicates), its share of the available gain (the
best truth gain any arm's trial had in that replicate: an upper bound, chosen on the
truth), false adoptions (adopted, and not better in truth), and the time to the first
verdict that adopts a config better in truth.

- gain: the voting space on `synthetic:small+misleading-audio` (scenario_grid.py).
- null: the training seed alone on `synthetic:small` (verdict_error.py): every
  adoption is a false one.
"""

from __future__ import annotations

import argparse
import os
import signal
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import record
from verdict_error import SEED_SPACE

ARMS = {
    "default": {},
    "gp": {"sampler": "gp"},
    "cmaes": {"sampler": "cmaes"},
    "random": {"sampler": "random"},
    "no-cache": {"cache": False},
    "plain": None,
}
CHECKPOINTS = 8  # verdicts per search, at equal steps of the budget, for the time to a gain


@dataclass
class Arm:
    """One arm's search in one replicate: when each trial finished, and where its
    predictions are."""

    name: str
    folder: Path
    finished: dict[int, float] = field(default_factory=dict)  # trial -> seconds
    trial_ids: dict[int, str] = field(default_factory=dict)
    inner: dict[int, float] = field(default_factory=dict)
    data: Any = None  # the plain loop's data and holdout (a search folder holds its own)
    holdout: Any = None


class Budget:
    """A Ctrl-C for this process `seconds` after `start()` (what a user would press)."""

    def __init__(self, seconds: float) -> None:
        self.seconds, self.t0 = seconds, 0.0
        self.timer: threading.Timer | None = None

    def start(self) -> None:
        self.t0 = time.perf_counter()
        self.timer = threading.Timer(self.seconds, os.kill, (os.getpid(), signal.SIGINT))
        self.timer.start()

    def now(self) -> float:
        return time.perf_counter() - self.t0

    def stop(self) -> None:
        if self.timer:
            self.timer.cancel()


def run_search(arm: str, seed: int, args, space: str, work: Path) -> Arm:
    """One mer-tune search, stopped at the budget; trial finish times from its events."""
    import mer_tune
    from mer_tune.errors import SearchInterrupted

    out = Arm(arm, work / arm / f"r{seed}")
    budget = Budget(args.budget)

    def on_event(kind: str, row: dict | None = None, **_) -> None:
        now = budget.now()
        if kind == "complete" and row.get("status") == "FINISHED":
            out.finished[int(row["trial"])] = now
        elif kind == "batch":  # a batch's trials reach the user together, when it arrives
            for r in row["rows"]:
                if r.get("status") == "FINISHED":
                    out.finished[int(r["trial"])] = now

    budget.start()
    try:
        mer_tune.search(
            space=space, trials=args.cap, data=args.data, seed=seed, name=f"r{seed}",
            storage=str(work / arm), folds=1, overrides=args.overrides, on_event=on_event,
            confirm_top=0, **ARMS[arm],
        )  # fmt: skip
    except (SearchInterrupted, KeyboardInterrupt):
        pass
    finally:
        budget.stop()
    results = pd.read_csv(out.folder / "results.csv")
    for _, r in results[results["status"] == "FINISHED"].iterrows():
        t = int(r["trial"])
        if t not in out.finished and str(r["trial_id"]).startswith("batch_"):
            # Being recorded when the Ctrl-C came: a batch is recorded whole, then it stops.
            out.finished[t] = args.budget
        if out.finished.get(t, np.inf) <= args.budget:  # not a Tune trial ending as it stopped
            out.trial_ids[t], out.inner[t] = str(r["trial_id"]), float(r["weighted_f1"])
    out.finished = {t: s for t, s in out.finished.items() if t in out.trial_ids}
    return out


def run_plain(seed: int, args, space_path: str, work: Path) -> Arm:
    """A plain Optuna loop over the same pipeline function, stopped at the budget."""
    import optuna
    import torch

    from mer_tune.data.layout import HOLDOUT, TEST
    from mer_tune.data.resolve import resolve
    from mer_tune.hpo import confirm, holdout
    from mer_tune.hpo.folder import SearchFolder
    from mer_tune.hpo.objectives import METRIC
    from mer_tune.hpo.optuna_adapter import DefineByRun
    from mer_tune.hpo.spaces import load_space, trial_config
    from mer_tune.hpo.trial import final_metrics
    from mer_tune.method import pipeline
    from mer_tune.method.config import build_config, with_overrides

    out = Arm("plain", work / "plain" / f"r{seed}")
    outputs = SearchFolder(out.folder).outputs
    outputs.mkdir(parents=True)
    torch.set_num_threads(os.cpu_count() or 1)
    budget = Budget(args.budget)
    data = ho = None
    budget.start()
    try:
        base = with_overrides(build_config(), {**args.overrides, "eval.folds": 1, "seed": seed})
        data = resolve(args.data)
        ho = holdout.choose(data, 0.2, seed, base.eval.folds, base.eval.select_on)
        trials = holdout.withhold(data, ho)
        predict_idx = np.flatnonzero(np.isin(trials.split, [HOLDOUT, TEST]))
        sp = load_space(space_path, base)
        study = optuna.create_study(
            direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed)
        )
        study.enqueue_trial(sp.defaults(base))  # the paper's values first, as in a search
        while True:
            trial = study.ask()
            DefineByRun(sp)(trial)
            cfg = trial_config(base, dict(trial.params))
            res = pipeline.run(trials, cfg, predict_idx=predict_idx)
            tid = f"plain_{trial.number:05d}"
            confirm.save_trial_outputs(
                outputs, tid, predict_idx, res.extra_probs, res.splits, res.fold_votes,
                res.offsets, trials.split[predict_idx] == HOLDOUT,
            )  # fmt: skip
            score = final_metrics(res, cfg, trials)[METRIC]
            study.tell(trial, score)
            out.trial_ids[trial.number], out.inner[trial.number] = tid, float(score)
            out.finished[trial.number] = budget.now()  # last: a finished trial is complete
    except KeyboardInterrupt:
        pass
    finally:
        budget.stop()
    out.data, out.holdout = data, ho
    return out


def search_data(arm: Arm):
    """(the data, the holdout) the arm's trials were scored against."""
    if arm.data is not None:
        return arm.data, arm.holdout
    from mer_tune.hpo.folder import SearchFolder
    from mer_tune.hpo.holdout import search_data as folder_data

    folder = SearchFolder(arm.folder)
    found = folder_data(folder, folder.record(), folder.base())
    return found.dataset, found.holdout


class Judge:
    """mer-tune's verdict on any set of an arm's finished trials (confirm the top 3 by
    inner score on the holdout, Holm-adjusted), or a plain loop's rule (adopt the best
    inner score); the trial adopted, or None for the baseline."""

    def __init__(self, arm: Arm, seed: int, top: int = 3) -> None:
        self.arm, self.seed, self.top = arm, seed, top
        self.data, self.holdout = search_data(arm)
        self.memo: dict[tuple, int | None] = {}
        from mer_tune.data.layout import TEST
        from mer_tune.hpo import confirm

        self.test = self.data.indices(TEST)
        self.known, self.labels = confirm._truth(self.data, self.test)  # as confirm.csv's

    def truth_f1(self, trial: int) -> float:
        """The trial's weighted F1 on the test names' hidden labels."""
        from mer_tune.hpo import confirm
        from mer_tune.hpo.folder import SearchFolder

        out = confirm.load_trial_outputs(
            SearchFolder(self.arm.folder).outputs, self.arm.trial_ids[trial]
        )
        return confirm._f1(self.labels, confirm._rows(out, self.test).argmax(1)[self.known])

    def adopted(self, done: list[int], naive: bool = False) -> int | None:
        from mer_tune.hpo import confirm
        from mer_tune.method.config import build_config

        arm = self.arm
        if 0 not in done:
            return None
        inner = [arm.inner[t] for t in done]
        table = pd.DataFrame({"trial": done, "status": "FINISHED", "weighted_f1": inner})
        if naive:
            best = table.sort_values(["weighted_f1", "trial"], ascending=[False, True])
            return None if int(best["trial"].iloc[0]) == 0 else int(best["trial"].iloc[0])
        chosen, _ = confirm.pick_candidates(table, self.top, 0)
        key = tuple(chosen)
        if chosen and key not in self.memo:
            cands = [
                confirm.Candidate(t, arm.trial_ids[t], arm.inner[t], build_config(), arm.folder)
                for t in (*chosen, 0)
            ]
            v = confirm.confirm(self.data, self.holdout, cands[:-1], cands[-1], 0, self.seed)
            self.memo[key] = v.verdict.adopted if v.verdict.outcome == "gain" else None
        return self.memo.get(key)


def verdicts(judge: Judge, budget: float, naive: bool = False) -> list[tuple[float, int | None]]:
    """(checkpoint seconds, the trial adopted then or None) at CHECKPOINTS equal steps of
    the budget, on the trials done by then."""
    out = []
    for k in range(1, CHECKPOINTS + 1):
        at = budget * k / CHECKPOINTS
        out.append(
            (at, judge.adopted([t for t, s in judge.arm.finished.items() if s <= at], naive))
        )
    return out


def score_arm(arm: Arm, seed: int, args, truths: dict) -> dict:
    """The arm's verdicts at each checkpoint, as truth gains over its baseline."""
    judge = Judge(arm, seed)
    for t in arm.trial_ids:
        truths.setdefault((arm.name, t), judge.truth_f1(t))
    base = truths.get((arm.name, 0), float("nan"))
    rows = []
    # A plain loop is also judged by its own rule: adopt the best inner score.
    for naive in [False] + ([True] if arm.name == "plain" else []):
        checks = verdicts(judge, args.budget, naive)
        gains = [0.0 if t is None else truths[(arm.name, t)] - base for _, t in checks]
        first = next(
            (at for (at, t), g in zip(checks, gains, strict=True) if t is not None and g > 0), None
        )
        rows.append({
            "arm": arm.name if not naive else "plain, best inner score", "seed": seed,
            "trials": len(arm.trial_ids), "adopted": checks[-1][1], "gain": gains[-1],
            "first_true_gain_s": first,
            "best_tried": max(truths[(arm.name, t)] for t in arm.trial_ids) - base if arm.trial_ids else float("nan"),
        })  # fmt: skip
    return rows


def summary(frame: pd.DataFrame, scenario: str) -> None:
    avail = frame.groupby("seed")["best_tried"].max()  # the best any arm's trial had
    print(
        "| arm | trials done | truth gain of the adopted (mean ± sd) | share of the available (ratio of means) | false adoptions | time to a first true gain |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for arm, g in frame.groupby("arm", sort=False):
        n = len(g)
        adopted = g["adopted"].notna()
        false = adopted if scenario == "null" else adopted & (g["gain"] <= 0)
        # A ratio of means (mean gain / mean available): one replicate's may be near zero.
        share = (
            g["gain"].mean() / avail.loc[g["seed"]].mean() if scenario == "gain" else float("nan")
        )
        first = g["first_true_gain_s"].dropna()
        when = f"{first.median():.0f} s (median, {len(first)} of {n})" if len(first) else "never"
        print(f"| {arm} | {g['trials'].mean():.0f} | {g['gain'].mean():+.4f} ± {g['gain'].std(ddof=1):.4f} "
              f"| {share:.0%} | {int(false.sum())} of {n} ({int(adopted.sum())} adopted) | {when} |")  # fmt: skip
    print(
        f"available (the best truth gain any trial had, per replicate): {avail.mean():+.4f} ± {avail.std(ddof=1):.4f}"
    )


def by_trials(work: Path, counts: list[int], top: int) -> None:
    """The sampler arms of an earlier run (folder `work`) as searches of N trials: the
    first N trials of a batched search are exactly an N-trial search (its study asks and
    is told one trial at a time). For choosing `--sampler auto`'s rule; `top`: the
    verdict confirms that many (`--confirm-top`), to see what K costs the verdict."""
    rows = []
    for name in ("default", "gp", "cmaes", "random"):
        for folder in sorted((work / name).glob("r*")):
            seed = int(folder.name[1:])
            table = pd.read_csv(folder / "results.csv")
            table = table[table["status"] == "FINISHED"]
            arm = Arm(name, folder)
            arm.trial_ids = dict(zip(table["trial"], table["trial_id"].astype(str), strict=True))
            arm.inner = dict(zip(table["trial"], table["weighted_f1"], strict=True))
            judge = Judge(arm, seed, top)
            truth = {t: judge.truth_f1(t) for t in arm.trial_ids}
            for n in counts:  # 0: every trial the search recorded (by its budget)
                done = [t for t in arm.trial_ids if t < n or not n]
                adopted, best = judge.adopted(done), judge.adopted(done, naive=True)
                rows.append({
                    "arm": name, "trials": n, "seed": seed, "adopted": adopted is not None,
                    "gain": 0.0 if adopted is None else truth[adopted] - truth[0],
                    "best_inner_gain": 0.0 if best is None else truth[best] - truth[0],
                })  # fmt: skip
    frame = pd.DataFrame(rows)
    print(
        "| sampler | trials | adopted | truth gain of the adopted | truth gain of the best inner score |"
    )
    print("| --- | --- | --- | --- | --- |")
    for (name, n), g in frame.groupby(["arm", "trials"], sort=False):
        print(f"| {name} | {n} | {int(g['adopted'].sum())} of {len(g)} | {g['gain'].mean():+.4f} ± "
              f"{g['gain'].std(ddof=1):.4f} | {g['best_inner_gain'].mean():+.4f} ± {g['best_inner_gain'].std(ddof=1):.4f} |")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scenario", choices=["null", "gain"], default="gain")
    parser.add_argument("--budget", type=float, default=120.0, help="seconds per search")
    parser.add_argument("--replicates", type=int, default=5)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--arms", default=",".join(ARMS))
    parser.add_argument("--data", default=None)
    parser.add_argument("--cap", type=int, default=2000, help="most trials per search")
    parser.add_argument("--set", dest="sets", action="append", default=[])
    parser.add_argument("--by-trials", type=Path, help="an earlier run's folder to re-read")
    parser.add_argument("--counts", type=int, nargs="+", default=[16, 40, 100, 0])
    parser.add_argument("--confirm-top", type=int, default=3, help="with --by-trials")
    args = parser.parse_args()
    if args.by_trials:
        return by_trials(args.by_trials.resolve(), args.counts, args.confirm_top)
    args.data = args.data or (
        "synthetic:small+misleading-audio" if args.scenario == "gain" else "synthetic:small"
    )

    from mer_tune.data.resolve import resolve
    from mer_tune.hpo.ray_setup import init_ray
    from mer_tune.hpo.spaces import resolve_path
    from mer_tune.method.config import parse_set_options

    args.overrides = parse_set_options(args.sets)
    # A job started in the background of a script ignores Ctrl-C: the budget needs it.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    work = Path(tempfile.mkdtemp(prefix="mer-tune-value-"))
    os.chdir(work)
    space = "voting"
    if args.scenario == "null":
        space = str(work / "seed.yaml")
        Path(space).write_text(SEED_SPACE)
    init_ray(None)  # before any clock starts: every arm but the plain loop uses it
    resolve(args.data)  # the built-in data is written once, before any clock starts
    arms = args.arms.split(",")
    print(f"scenario {args.scenario}: space {Path(space).stem}, data {args.data}, "
          f"budget {args.budget:.0f} s, arms {arms}, {' '.join(args.sets)}; work {work}", flush=True)  # fmt: skip
    rows = []
    for seed in range(args.first_seed, args.first_seed + args.replicates):
        truths: dict = {}
        for name in arms:
            if name == "plain":
                arm = run_plain(seed, args, str(resolve_path(space)), work)
            else:
                arm = run_search(name, seed, args, space, work)
            got = score_arm(arm, seed, args, truths)
            for r in got:
                print(f"r{seed} {r['arm']}: {r['trials']} trials, adopted {r['adopted']}, "
                      f"truth gain {r['gain']:+.4f}, best tried {r['best_tried']:+.4f}", flush=True)  # fmt: skip
            rows += got
        pd.DataFrame(rows).to_csv(work / "value.csv", index=False)
    frame = pd.DataFrame(rows)
    print(f"\n{args.scenario} scenario, {args.replicates} replicates, {args.data}, space "
          f"{Path(space).stem}, budget {args.budget:.0f} s per search, {' '.join(args.sets)}")  # fmt: skip
    summary(frame, args.scenario)


if __name__ == "__main__":
    record.run(main)
