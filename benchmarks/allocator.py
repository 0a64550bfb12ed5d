"""ms per CPU finetuning step under glibc's malloc settings, each in a fresh process
(mallopt is process-wide), alternated over --rounds.

    python benchmarks/allocator.py --threads 1 --rounds 2

none: glibc's dynamic thresholds. 1mib: the mmap threshold fixed at 1 MiB (the setting
before; trim threshold left at its default). tuned: what the entry points set now
(mer_tune.method.malloc.tune_malloc: 8 MiB in the heap while training, 64 MiB trim).
benchmarks/memory_probe.py --malloc measures the memory side of the same settings.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import numpy as np
import record
from step_speed import finetune_step_ms, tiny_batches

SETTINGS = {"none": None, "1mib": (1 << 20, 128 << 10), "tuned": "tuned"}


def _child(setting: str, threads: int, steps: int) -> None:
    import torch

    from mer_tune.method import malloc

    value = SETTINGS[setting]
    if value == "tuned":
        malloc.tune_malloc()
    elif value is not None:
        malloc.tune_malloc(*value)
    torch.set_num_threads(threads)
    data, cfg, batches = tiny_batches(steps)
    print(json.dumps({"ms": finetune_step_ms(data, cfg, batches)}))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--child", choices=list(SETTINGS))
    args = parser.parse_args()
    if args.child:
        _child(args.child, args.threads, args.steps)
        return
    ms: dict[str, list[float]] = {s: [] for s in SETTINGS}
    for _ in range(args.rounds):
        for setting in SETTINGS:
            cmd = [sys.executable, __file__, "--child", setting, "--threads", str(args.threads)]
            out = subprocess.run(cmd + ["--steps", str(args.steps)], capture_output=True, text=True)
            if out.returncode:
                sys.exit(out.stderr[-2000:])
            ms[setting].append(json.loads(out.stdout.strip().splitlines()[-1])["ms"])
    base = np.mean(ms["1mib"])
    for setting, values in ms.items():
        runs = ", ".join(f"{v:.1f}" for v in values)
        print(
            f"{setting}: {np.mean(values):.1f} ms a finetuning step, batch 256, "
            f"{args.threads} thread(s) (runs {runs}); 1mib / {setting} = {base / np.mean(values):.2f}x"
        )


if __name__ == "__main__":
    record.run(main)
