"""Tensor memory of one finetuning step, the general path against the fused one, beside
what the GPU estimate (`mer_tune.hpo.gpu.step_terms`) counts for the same things.

    python benchmarks/step_memory.py --batch-sizes 256 4096 [--set loss.learn_temperature=true]

The estimate guarding --gpus-per-trial was calibrated on an H100 with the general path
(nn.TransformerEncoderLayer, one NT-Xent call per term). Its model and batch terms must
still bound what the fused step keeps alive. Measured on the CPU, in float32, at the
built-in data's feature widths (synthetic:small: 1024 / 768 / 5120), each path in a fresh
process: the PyTorch profiler's memory timeline of the third step (after two warm-up
steps), whose peak counts every live tensor: weights, gradients, Adam's moments, the
batch, activations and temporaries. A card adds its CUDA context, allocator cache and
graph pools (the estimate's RUNTIME and CUDA_CONTEXT), which only a card can measure;
under bf16 autocast its activations are half as wide.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import record
from step_speed import _mode, finetune_steps

MiB = 2**20


def _child(fused: bool, batch_size: int, spec: str, sets: list[str]) -> None:
    from torch.profiler import ProfilerActivity, profile

    from mer_tune.data.layout import LABELLED
    from mer_tune.data.resolve import resolve
    from mer_tune.hpo.gpu import step_terms
    from mer_tune.method.config import build_config, parse_set_options, with_overrides

    _mode(fused)
    data = resolve(spec)
    cfg = build_config({"optim": {"batch_size": batch_size}})
    cfg = with_overrides(cfg, parse_set_options(sets))
    rng = np.random.default_rng(0)
    labelled = data.indices(LABELLED)
    batches = [np.sort(rng.choice(labelled, batch_size)) for _ in range(3)]
    steps = finetune_steps(data, cfg)
    steps(batches[:2])  # Adam's moments exist from here on
    with profile(
        activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True
    ) as prof:
        steps(batches[2:])
    # Deprecated in favour of CUDA's memory snapshots, which see no CPU tensors.
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        path = Path(tmp) / "timeline.json"
        prof.export_memory_timeline(str(path), device="cpu")
        _, sizes = json.loads(path.read_text())
    sizes = np.asarray(sizes, dtype=np.int64)
    peak = int(sizes.sum(axis=1).max())  # the profiler's split by kind is a guess: the total
    model_bytes, batch_bytes = step_terms(data.dims, len(data.classes), cfg)
    print(json.dumps({"peak": peak, "estimate_model": model_bytes, "estimate_batch": batch_bytes}))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[256, 4096])
    parser.add_argument("--child", choices=["general", "fused"])
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--data", default="synthetic:small")
    parser.add_argument("--set", action="append", default=[], help="KEY=VALUE, as mer-tune's")
    args = parser.parse_args()
    if args.child:
        _child(args.child == "fused", args.batch_size, args.data, args.set)
        return
    for batch_size in args.batch_sizes:
        seen = {}
        for path in ("general", "fused"):
            cmd = [sys.executable, __file__, "--child", path, "--batch-size", str(batch_size)]
            cmd += ["--data", args.data] + [f"--set={kv}" for kv in args.set]
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode:
                sys.exit(out.stderr[-2000:])
            m = seen[path] = json.loads(out.stdout.strip().splitlines()[-1])
            bound = m["estimate_model"] + m["estimate_batch"]
            print(
                f"batch {batch_size}, {path}: {m['peak'] / MiB:.1f} MiB of tensors at the step's "
                f"peak; the estimate's model + batch terms {bound / MiB:.1f} MiB "
                f"({m['estimate_model'] / MiB:.1f} + {m['estimate_batch'] / MiB:.1f}), "
                f"measured / estimate {m['peak'] / bound:.2f}"
            )
        ratio = seen["fused"]["peak"] / seen["general"]["peak"]
        print(f"batch {batch_size}: fused / general peak {ratio:.2f}")


if __name__ == "__main__":
    record.run(main)
