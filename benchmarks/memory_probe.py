"""Memory of one inference pass over a whole packed dataset: is the feature set held once?

    python benchmarks/memory_probe.py --dir /tmp/mer-full --batch-size 4096
    python benchmarks/memory_probe.py --pack /tmp/mer-full-pack --malloc 1048576,131072

--malloc sets glibc's mmap and trim thresholds as the entry points do (default: the
values they use, mer_tune.method.malloc.tune_malloc); "none" leaves glibc's dynamic ones.

Prints private (RssAnon) and file-backed (RssFile, the memory-mapped pack) resident
memory and the peak (VmHWM), before and after the pass.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import record
import torch

from mer_tune.data.layout import DataOptions
from mer_tune.data.pack import default_pack_dir, load_pack
from mer_tune.method import malloc, train
from mer_tune.method.config import build_config


def memory() -> str:
    keep = ("VmHWM", "RssAnon", "RssFile")
    lines = Path("/proc/self/status").read_text().splitlines()
    return "  ".join(" ".join(line.split()) for line in lines if line.startswith(keep))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dir", default="/tmp/mer-full")
    parser.add_argument("--pack", help="a pack folder (instead of --dir's default pack)")
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--malloc", default="tuned", help="tuned, none, or MMAP,TRIM bytes")
    args = parser.parse_args()
    if args.malloc == "tuned":
        malloc.tune_malloc()
    elif args.malloc != "none":
        mmap, trim = (int(v) for v in args.malloc.split(","))
        malloc.tune_malloc(mmap, trim)
    print(f"malloc: {args.malloc}")
    pack_dir = Path(args.pack) if args.pack else default_pack_dir(Path(args.dir), DataOptions())
    data = load_pack(pack_dir)
    print(f"packed features: {data.nbytes() / 2**30:.2f} GiB; after loading: {memory()}")
    feats = train.Features(data, torch.device("cpu"))
    model = train.make_model(data, build_config().model, 0, torch.device("cpu"))
    t0 = time.perf_counter()
    train.predict(model, feats, np.arange(len(data.names)), batch_size=args.batch_size)
    print(
        f"inference over {len(data.names)} samples in {time.perf_counter() - t0:.1f} s; after: {memory()}"
    )


if __name__ == "__main__":
    record.run(main)
