"""Several trials on one card, each uploading its own features against all reading one
copy (--share-features: mer_tune/hpo/card_features.py).

    python benchmarks/card_sharing.py --pack /tmp/mer-full-pack --trials 8 \\
        --set pretrain.epochs=1 [--deadline 420]
    python benchmarks/card_sharing.py --scale tiny --device cpu --trials 2   # a dry run

Arms, one after another, each `--trials` processes at once on the card, as fractional
GPUs give (`--gpus-per-trial 0.125`): one trial alone with its own copy; `--trials` with
their own copies; `--trials` opening one copy. For the last, this process plays the
card's holder: it builds a FeatureHolder (the class the Ray actor runs), writes its
handles to a file, and each trial process opens them (card_features.open_handles), as a
trial opens what its holder actor hands it. No Ray is needed, so it runs where only
PyTorch is installed. Printed: wall time, throughput against the lone trial, the card's
peak memory (nvidia-smi, sampled every 0.25 s) against the lone trial's, and each trial's
F1 (sharing must not change it). The pack is made as gpu_trial.py makes it. With
`--device cpu` the holder serves shared-memory CPU tensors: a check that the script
runs, not a measurement of a card.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import sys
import tempfile
import time
from pathlib import Path

import record
from gpu_trial import _pack, _run_trials, card_peak


def _child(pack_dir: str, sets: list[str], device: str, handles: str | None) -> None:
    import torch

    from mer_tune.data.pack import load_pack
    from mer_tune.hpo import card_features
    from mer_tune.method import malloc, pipeline, train
    from mer_tune.method.config import build_config, parse_set_options, with_overrides

    t0 = time.perf_counter()
    malloc.tune_malloc()
    torch.set_num_threads(1)
    data = load_pack(Path(pack_dir))
    feats = None
    if handles:
        arrays = card_features.open_handles(pickle.loads(Path(handles).read_bytes()))
        feats = train.Features(data, torch.device(device), arrays)
    cfg = with_overrides(build_config({"eval": {"folds": 1}}), parse_set_options(sets))
    res = pipeline.run(data, cfg, device=device, feats=feats)
    print(json.dumps({"wall": time.perf_counter() - t0, "f1": res.weighted_f1}))


def _arm(n: int, args: argparse.Namespace, handles: str | None) -> dict:
    cmd = [sys.executable, __file__, "--child", "--pack", args.pack, "--device", args.device]
    for s in args.sets:
        cmd += ["--set", s]
    cmd += ["--handles", handles] if handles else []
    left = args.deadline - (time.perf_counter() - args.started)
    with card_peak() as peak:
        return _run_trials(cmd, n, dict(os.environ), left) | {"peak": peak[0]}


def _holder(args: argparse.Namespace):
    """The card's one copy, held by this process (what the holder actor does)."""
    from mer_tune.data.pack import load_pack
    from mer_tune.hpo.card_features import FeatureHolder

    holder = FeatureHolder(load_pack(Path(args.pack)), args.device, None)
    print(f"holder: {holder.nbytes() / 2**30:.2f} GiB of features on {args.device}", flush=True)
    return holder


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pack", default="/tmp/mer-full-pack")
    parser.add_argument("--scale", default="full")
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--set", dest="sets", action="append", default=[])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--deadline", type=float, default=420.0)
    parser.add_argument("--child", action="store_true")
    parser.add_argument("--handles")
    args = parser.parse_args()
    if args.child:
        _child(args.pack, args.sets, args.device, args.handles)
        return
    args.started = time.perf_counter()
    if args.scale != "full":
        args.pack = f"{args.pack}-{args.scale}"
    if not (Path(args.pack) / "meta.json").exists():
        _pack(Path(args.pack), args.scale)
    gib = 2**30
    arms = [
        ("one trial, its own copy", 1, False),
        (f"{args.trials} trials, each its own copy", args.trials, False),
        (f"{args.trials} trials, one shared copy", args.trials, True),
    ]
    done = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, n, share in arms:
            handles = None
            if share:  # the holder comes up only now: the other arms' peaks leave it out
                handles = Path(tmp) / "handles.pkl"
                holder = _holder(args)
                handles.write_bytes(pickle.dumps(holder.handles()))
            res = _arm(n, args, str(handles) if handles else None)
            done[label] = res
            f1 = ", ".join(f"{t['f1']:.4f}" for t in res["trials"])
            print(
                f"{label}: {res['wall']:.1f} s wall, card peak {res['peak'] / gib:.2f} GiB; "
                f"F1 {f1}",
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
