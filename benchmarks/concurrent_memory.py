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
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

os.environ.setdefault("RAY_AUTH_MODE", "disabled")


def _tree_pss(root: psutil.Process) -> int:
    total = 0
    for proc in [root, *root.children(recursive=True)]:
        try:
            total += proc.memory_full_info().pss
        except psutil.Error:
            continue
    return total


def _child(root: str, n: int, sets: list[str]) -> None:
    import ray

    from mer_tune.config import parse_set_options
    from mer_tune.tuning import search

    me = psutil.Process()
    peak, stop = [0], threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _tree_pss(me))
            time.sleep(0.5)

    work = Path(tempfile.mkdtemp(prefix="mer-tune-mem-"))
    ray.init(num_cpus=n, include_dashboard=False, configure_logging=False, log_to_driver=False)
    idle = _tree_pss(me)
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
    print(json.dumps({"peak": peak[0], "idle": idle, "wall": wall, "finished": finished}))


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
    from mer_tune.data import load

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


if __name__ == "__main__":
    main()
