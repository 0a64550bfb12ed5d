"""Several trials on one card, each uploading its own features against all reading one
copy from the card's holder (--share-features, mer_tune/hpo/card_features.py).

    python benchmarks/card_sharing.py --pack /tmp/mer-full-pack --trials 8 \\
        --set pretrain.epochs=1 [--deadline 420]
    python benchmarks/card_sharing.py --scale tiny --device cpu --trials 2   # a dry run

Arms, one after another, each trials at once as Ray tasks with 1/trials of the card (what
`--gpus-per-trial` gives): one trial alone with its own copy; `--trials` with their own
copies; `--trials` sharing one copy. Printed: wall time, throughput against the lone trial,
the card's peak memory against the lone trial's (nvidia-smi, sampled every 0.25 s), and
each trial's F1 (sharing must not change it). The pack is made as gpu_trial.py makes it.
On the CPU the holder serves shared-memory CPU tensors: a check that the script runs, not
a measurement of a card.
"""

from __future__ import annotations

import argparse
import threading
import time
from pathlib import Path

import record
from gpu_trial import _card_used_bytes, _pack


def _trial(data_ref: list, sets: list[str], device: str, share: str | None) -> dict:
    import ray
    import torch

    from mer_tune.hpo import card_features
    from mer_tune.method import pipeline, train
    from mer_tune.method.config import build_config, parse_set_options, with_overrides

    t0 = time.perf_counter()
    data = ray.get(data_ref[0])
    train.tune_malloc()
    torch.set_num_threads(1)
    feats = None
    if share:
        arrays = card_features.open_shared(data_ref, share, device=device)
        feats = train.Features(data, torch.device(device), arrays)
    cfg = with_overrides(build_config({"eval": {"folds": 1}}), parse_set_options(sets))
    res = pipeline.run(data, cfg, device=device, feats=feats)
    return {"wall": time.perf_counter() - t0, "f1": res.weighted_f1}


def _arm(data_ref: list, n: int, args: argparse.Namespace, share: str | None) -> dict:
    import ray

    peak, stop = [0], threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _card_used_bytes())
            time.sleep(0.25)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    gpus = 1 / n if args.device == "cuda" else 0
    task = ray.remote(_trial).options(num_gpus=gpus, num_cpus=0, max_retries=0)
    t0 = time.perf_counter()
    try:
        outs = ray.get(
            [task.remote(data_ref, args.sets, args.device, share) for _ in range(n)],
            timeout=max(1.0, args.deadline - (time.perf_counter() - args.started)),
        )
    finally:
        stop.set()
        sampler.join()
        if share:
            from mer_tune.hpo import card_features

            card_features.release(share)
    return {"n": n, "wall": time.perf_counter() - t0, "peak": peak[0], "trials": outs}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pack", default="/tmp/mer-full-pack")
    parser.add_argument("--scale", default="full")
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--set", dest="sets", action="append", default=[])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--deadline", type=float, default=420.0)
    args = parser.parse_args()
    args.started = time.perf_counter()
    import ray

    from mer_tune.data.pack import load_pack

    pack = Path(args.pack if args.scale == "full" else f"{args.pack}-{args.scale}")
    if not (pack / "meta.json").exists():
        _pack(pack, args.scale)
    data = load_pack(pack)
    ray.init(include_dashboard=False, configure_logging=False, log_to_driver=False,
             _node_ip_address="127.0.0.1")  # fmt: skip
    ref = ray.put(data.shareable())
    gib = 2**30
    arms = [
        ("one trial, its own copy", 1, None),
        (f"{args.trials} trials, each its own copy", args.trials, None),
        (f"{args.trials} trials, one shared copy", args.trials, "bench"),
    ]
    done = {}
    for label, n, share in arms:
        res = _arm([ref], n, args, share)
        done[label] = res
        f1 = ", ".join(f"{t['f1']:.4f}" for t in res["trials"])
        print(
            f"{label}: {res['wall']:.1f} s wall, card peak {res['peak'] / gib:.2f} GiB; F1 {f1}",
            flush=True,
        )
    one = done[arms[0][0]]
    for label, n, _ in arms[1:]:
        res = done[label]
        speed = n * one["wall"] / res["wall"]
        memory = res["peak"] / one["peak"] if one["peak"] else float("nan")
        print(f"{label}: throughput {speed:.2f}x one trial's, card memory {memory:.2f}x")


if __name__ == "__main__":
    record.run(main)
