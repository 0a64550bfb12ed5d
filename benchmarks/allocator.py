"""ms per CPU finetuning step under glibc's malloc settings, each in a fresh process
(mallopt is process-wide), alternated over --rounds.

    python benchmarks/allocator.py --threads 1 --rounds 2

none: glibc's dynamic thresholds. 1mib: the mmap threshold fixed at 1 MiB (the setting
before; trim threshold left at its default). tuned: what the entry points set now
(mer_tune.method.train.tune_malloc: 8 MiB in the heap while training, 64 MiB trim).
benchmarks/memory_probe.py --malloc measures the memory side of the same settings.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import numpy as np
import record

SETTINGS = {"none": None, "1mib": (1 << 20, 128 << 10), "tuned": "tuned"}


def _child(setting: str, threads: int, steps: int) -> None:
    import torch
    import torch.nn.functional as F

    from mer_tune.data.layout import LABELLED
    from mer_tune.data.resolve import resolve
    from mer_tune.method import train
    from mer_tune.method.config import HEADS, build_config
    from mer_tune.method.steps import Stepper

    value = SETTINGS[setting]
    if value == "tuned":
        train.tune_malloc()
    elif value is not None:
        train.tune_malloc(*value)
    torch.set_num_threads(threads)
    data, cfg = resolve("synthetic:tiny"), build_config()
    rng = np.random.default_rng(0)
    batches = [np.sort(rng.choice(data.indices(LABELLED), 256)) for _ in range(steps)]
    feats = train.Features(data, torch.device("cpu"))
    model = train.make_model(data, cfg.model, 0, feats.device)
    st = train.Steps.of(cfg)
    gen = torch.Generator().manual_seed(0)
    y = torch.as_tensor(np.asarray(data.labels))

    def loss_fn(x, _y, ids):
        encoded = model.encode(x)
        logits = model.logits(encoded[0])
        loss = sum(F.cross_entropy(logits[h], y[ids]) for h in HEADS) / len(HEADS)
        c = train._contrastive_loss(model, x, ids, st, feats, gen, True, encoded)
        return loss + st.loss.finetune_contrastive * c

    stepper = Stepper(model, feats.batch, loss_fn, cfg.optim, feats.device)
    stepper.epoch(batches[:3])  # warm-up
    t0 = time.perf_counter()
    stepper.epoch(batches)
    print(json.dumps({"ms": (time.perf_counter() - t0) / steps * 1000}))


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
