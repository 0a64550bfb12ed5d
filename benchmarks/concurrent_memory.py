"""Memory of a search with 1, 2 and 4 concurrent trials at MER2024-SEMI scale (issue
target: 4 concurrent trials under 1.5x the memory of one).

    python benchmarks/concurrent_memory.py --dir /tmp/mer-full --concurrency 1 2 4 \\
        --set pretrain.epochs=1 --set finetune.epochs=2 --set self_training.epochs=1

Each level runs a real `mer-tune search` (fresh local Ray, thresholds space, N trials, N at
a time, cache off so every trial computes every stage) in its own subprocess, and samples
the summed PSS of that process and all its descendants (driver, Ray's daemons, the trial
workers) every 0.5 s. PSS splits shared pages between the processes that map them, so the
dataset in Ray's object store counts once however many trials read it. Epochs are cut
because memory does not grow with them: every stage still runs over the full data.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import record


def _rollup(pid: int) -> dict[str, int]:
    """Proportional set size split by kind (anonymous, file-backed, shared memory)."""
    out = {"anon": 0, "file": 0, "shmem": 0}
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            key, _, value = line.partition(":")
            kind = {"Pss_Anon": "anon", "Pss_File": "file", "Pss_Shmem": "shmem"}.get(key)
            if kind:
                out[kind] += int(value.split()[0]) * 1024
    except OSError:
        pass
    return out


def _role(proc: psutil.Process, me: int) -> str:
    if proc.pid == me:
        return "driver"
    try:
        name = " ".join(proc.cmdline()[:1]) + proc.name()
    except psutil.Error:
        return "ray"
    # Trial workers are Ray workers that ran a trial (ray::IDLE when pre-started only).
    return "trials" if "ImplicitFunc" in name or "run_trial" in name else "ray"


def _tree_pss(root: psutil.Process) -> tuple[int, dict[str, dict[str, int]]]:
    """Summed PSS of root and its descendants, and its split by role and kind."""
    split: dict[str, dict[str, int]] = {}
    for proc in [root, *root.children(recursive=True)]:
        part = split.setdefault(_role(proc, root.pid), {"anon": 0, "file": 0, "shmem": 0})
        for kind, value in _rollup(proc.pid).items():
            part[kind] += value
    return sum(sum(v.values()) for v in split.values()), split


def _child(root: str, n: int, sets: list[str]) -> None:
    import ray

    from mer_tune.hpo.tuner import search
    from mer_tune.method.config import parse_set_options

    me = psutil.Process()
    peak, split, stop = [0], [{}], threading.Event()

    def sample() -> None:
        while not stop.is_set():
            total, parts = _tree_pss(me)
            if total > peak[0]:
                peak[0], split[0] = total, parts
            time.sleep(0.5)

    work = Path(tempfile.mkdtemp(prefix="mer-tune-mem-"))
    ray.init(num_cpus=n, include_dashboard=False, configure_logging=False, log_to_driver=False)
    idle = _tree_pss(me)[0]
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.perf_counter()
    res = search(
        space="thresholds",
        trials=n,
        data=root,
        overrides=parse_set_options(sets),
        concurrency=n,
        cache=False,
        storage=str(work),
        tracking_uri=f"sqlite:///{work / 'mlflow.db'}",
    )
    wall = time.perf_counter() - t0
    stop.set()
    sampler.join()
    finished = int((res.results["status"] == "FINISHED").sum())
    out = {"peak": peak[0], "split": split[0], "idle": idle, "wall": wall, "finished": finished}
    print(json.dumps(out))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dir", default="/tmp/mer-full")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--set", dest="sets", action="append", default=[])
    parser.add_argument("--child", type=int)
    args = parser.parse_args()
    if args.child:
        _child(args.dir, args.child, args.sets)
        return
    from mer_tune.data.pack import load

    load(args.dir)  # pack once, outside the measurements
    first = None
    for n in args.concurrency:
        cmd = [sys.executable, __file__, "--child", str(n), "--dir", args.dir]
        for s in args.sets:
            cmd += ["--set", s]
        run = subprocess.run(cmd, capture_output=True, text=True)
        if run.returncode != 0:
            sys.exit(f"concurrency {n} failed: {run.stderr[-2000:]}")
        out = json.loads(run.stdout.strip().splitlines()[-1])
        first = first or out["peak"]
        print(
            f"{n} concurrent: peak PSS {out['peak'] / 2**30:.2f} GiB (Ray idle "
            f"{out['idle'] / 2**30:.2f} GiB) = {out['peak'] / first:.2f}x one trial; "
            f"{out['finished']}/{n} finished in {out['wall']:.0f} s",
            flush=True,
        )
        for role, kinds in sorted(out["split"].items()):
            parts = ", ".join(f"{k} {v / 2**30:.2f}" for k, v in kinds.items())
            print(f"    at the peak, {role}: {parts} GiB", flush=True)


if __name__ == "__main__":
    record.run(main)
