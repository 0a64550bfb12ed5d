"""One trial (one fold) at MER2024-SEMI scale on a GPU: seconds per stage, GPU memory
against the per-trial estimate that guards fractional GPUs, CUDA graphs against eager
steps, and 1, 2 and 4 trials sharing the card.

    python benchmarks/gpu_trial.py --pack /tmp/mer-full-pack --concurrency 1 2 4 \\
        [--eager-set pretrain.epochs=1] [--compare-general] [--deadline 480] [--log results.jsonl]

The full synthetic dataset (5,030 labelled + 115,595 unlabelled, dims 768/1024/5120) is
generated in memory and packed into --pack when missing (the per-file layout and its
load time are measured by full_scale.py). Every trial runs in a fresh process, as a
Ray trial would; concurrent trials are separate processes on the same card, which is
what fractional GPUs (`--gpus-per-trial 0.25`) give. The eager run (MER_TUNE_CUDA_GRAPHS=0)
uses --eager-set to stay short; compare its stages per epoch. --compare-general adds one
trial with MER_TUNE_FUSED=0 (the general-purpose modules the fused step replaces), right
after the first. Steps that would not end before --deadline seconds are skipped and said so.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import record
from full_scale import peak_rss


def _child(pack_dir: str, sets: list[str], device: str) -> None:
    import torch

    from mer_tune.data.pack import load_pack
    from mer_tune.hpo import gpu
    from mer_tune.method import pipeline
    from mer_tune.method.config import build_config, parse_set_options, with_overrides

    t0 = time.perf_counter()
    data = load_pack(Path(pack_dir))
    cfg = with_overrides(build_config({"eval": {"folds": 1}}), parse_set_options(sets))
    res = pipeline.run(data, cfg, device=device)
    cuda = torch.cuda.is_available()
    wall = time.perf_counter() - t0
    out = {
        "wall": wall,
        "seconds": res.seconds,
        "weighted_f1": res.weighted_f1,
        "pseudo": sum(res.pseudo_added.values()),
        "pseudo_precision": res.pseudo_precision,
        "max_allocated": torch.cuda.max_memory_allocated() if cuda else 0,
        "max_reserved": torch.cuda.max_memory_reserved() if cuda else 0,
        "estimate": gpu.trial_bytes(data.dims, len(data.classes), data.nbytes(), cfg),
        "packed_bytes": data.nbytes(),
        "peak_rss": peak_rss(),
        "graphs": os.environ.get("MER_TUNE_CUDA_GRAPHS", "1") != "0",
    }
    print(json.dumps(out))


def _card_used_bytes() -> int:
    try:
        text = subprocess.run(
            ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout
        return int(text.split()[0]) * 2**20
    except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
        return 0


@contextlib.contextmanager
def card_peak() -> Iterator[list[int]]:
    """[the card's peak used bytes] while the block runs, sampled every 0.25 s."""
    peak, stop = [0], threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _card_used_bytes())
            time.sleep(0.25)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield peak
    finally:
        stop.set()
        sampler.join()


def _trials(pack: str, n: int, sets: list[str], device: str, env: dict, timeout: float) -> dict:
    """n trials at once on the card; the card's peak memory sampled every 0.25 s."""
    cmd = [sys.executable, __file__, "--child", "--pack", pack, "--device", device]
    for s in sets:
        cmd += ["--set", s]
    with card_peak() as peak:
        return _run_trials(cmd, n, env, timeout) | {"card_peak": peak[0]}


def _run_trials(cmd: list[str], n: int, env: dict, timeout: float) -> dict:
    t0 = time.perf_counter()
    procs = [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        for _ in range(n)
    ]
    outs = []
    try:
        for p in procs:
            stdout, stderr = p.communicate(timeout=max(1.0, timeout - (time.perf_counter() - t0)))
            if p.returncode != 0:
                raise RuntimeError(f"trial failed: {stderr[-3000:]}")
            outs.append(json.loads(stdout.strip().splitlines()[-1]))
            warned = [line for line in stderr.splitlines() if "CUDA graph" in line]
            if warned:
                outs[-1]["warnings"] = warned[:3]
    finally:
        for p in procs:
            p.kill()
    wall = time.perf_counter() - t0
    return {"n": n, "wall": wall, "trials": outs}


def _pack(pack_dir: Path, scale: str) -> None:
    from mer_tune.data import synthetic as synth
    from mer_tune.data.pack import pack

    t0 = time.perf_counter()
    data = synth.in_memory(scale, 0)
    pack(data, pack_dir, {"synthetic": f"{scale}-seed0"})
    print(
        f"generated and packed the {scale} dataset in {time.perf_counter() - t0:.0f} s", flush=True
    )


def _summary(label: str, res: dict) -> str:
    gib = 2**30
    lines = [
        f"{label}: {res['n']} trial(s) at once, {res['wall']:.1f} s wall, card peak "
        f"{res['card_peak'] / gib:.2f} GiB"
    ]
    for t in res["trials"]:
        stages = ", ".join(f"{k} {v:.1f}" for k, v in t["seconds"].items())
        lines.append(
            f"  trial {t['wall']:.1f} s ({stages}); F1 {t['weighted_f1']:.4f}; "
            f"{t['pseudo']} pseudo (precision {t['pseudo_precision'] or 0:.3f}); "
            f"torch peak {t['max_allocated'] / gib:.2f} GiB allocated, "
            f"{t['max_reserved'] / gib:.2f} reserved; estimate {t['estimate'] / gib:.2f} GiB; "
            f"host peak RSS {t['peak_rss'] / gib:.2f} GiB"
            + (f"; {t['warnings']}" if t.get("warnings") else "")
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pack", default="/tmp/mer-full-pack")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--set", dest="sets", action="append", default=[])
    parser.add_argument("--eager-set", action="append", default=None)
    parser.add_argument("--compare-general", action="store_true")
    parser.add_argument("--deadline", type=float, default=480.0)
    parser.add_argument("--log")
    parser.add_argument("--device", default="cuda")
    parser.add_argument(
        "--scale", default="full", help="synthetic scale to pack when --pack is missing"
    )
    parser.add_argument("--child", action="store_true")
    args = parser.parse_args()
    if args.child:
        _child(args.pack, args.sets, args.device)
        return
    start = time.perf_counter()
    import torch

    name = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    print(f"{name} | torch {torch.__version__} | {os.cpu_count()} CPUs", flush=True)
    if not (Path(args.pack) / "meta.json").exists():
        _pack(Path(args.pack), args.scale)

    plan = [(f"graphs x{n}", n, args.sets, {}) for n in args.concurrency[:1]]
    if args.compare_general:
        plan.append(("general (MER_TUNE_FUSED=0) x1", 1, args.sets, {"MER_TUNE_FUSED": "0"}))
    if args.eager_set is not None:
        plan.append(("eager x1", 1, args.sets + args.eager_set, {"MER_TUNE_CUDA_GRAPHS": "0"}))
    plan += [(f"graphs x{n}", n, args.sets, {}) for n in args.concurrency[1:]]
    single = None
    for label, n, sets, extra in plan:
        left = args.deadline - (time.perf_counter() - start)
        guess = (
            (single or 0) * (1 + 0.5 * (n - 1)) * (0.5 if "MER_TUNE_CUDA_GRAPHS" in extra else 1)
        )
        if left < guess * 1.2 or left < 20:
            print(f"{label}: skipped, {left:.0f} s left of the deadline", flush=True)
            continue
        try:
            res = _trials(args.pack, n, sets, args.device, os.environ | extra, timeout=left)
        except (RuntimeError, subprocess.TimeoutExpired) as err:
            print(f"{label}: {err}", flush=True)
            continue
        res |= {"label": label, "sets": sets}
        single = single or res["wall"]
        print(_summary(label, res), flush=True)
        if args.log:
            with open(args.log, "a") as fh:
                fh.write(json.dumps(res) + "\n")


if __name__ == "__main__":
    record.run(main)
