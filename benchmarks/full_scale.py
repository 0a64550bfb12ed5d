"""One trial (one fold) at MER2024-SEMI scale: seconds per stage, peak memory, and the
load time of the packed vs. the per-file layout.

    python benchmarks/full_scale.py --dir /tmp/mer-full [--device cpu|cuda] [--set key=value ...]
    python benchmarks/full_scale.py --pack /tmp/mer-full-pack --set pretrain.epochs=1 \
        --malloc 1048576,131072 --malloc tuned

--pack: an existing pack (gpu_trial.py makes one) instead of --dir's files; only the trial
runs. --malloc: the trial once per glibc setting (benchmarks/allocator.py), each in its
own process; the default is what a trial's process sets (tune_malloc).

Generates the full synthetic dataset (5,030 labelled + 115,595 unlabelled, real dims)
into --dir if it is not there, packs it, then measures in fresh subprocesses so that
each peak-memory figure belongs to one step alone.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import record


def peak_rss() -> int:
    """This process's own high-water RSS (VmHWM). ru_maxrss would also count the parent's
    peak, which Linux carries across fork and exec."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def _pack_dir(root: str) -> Path:
    from mer_tune.data.layout import DataOptions
    from mer_tune.data.pack import default_pack_dir

    path = Path(root)
    return path if (path / "meta.json").exists() else default_pack_dir(path, DataOptions())


def _child(step: str, root: str, device: str, sets: list[str], malloc: str) -> None:
    from mer_tune.data.layout import read_folders
    from mer_tune.data.pack import load_pack
    from mer_tune.method import pipeline
    from mer_tune.method.config import build_config, parse_set_options, with_overrides
    from mer_tune.method.malloc import tune_malloc

    if malloc == "tuned":
        tune_malloc()  # as a trial's process does
    elif malloc != "none":
        tune_malloc(*(int(v) for v in malloc.split(",")))

    t0 = time.perf_counter()
    out: dict = {}
    if step == "per-file":
        data = read_folders(root)
        out["rows"] = len(data.names)
    elif step == "packed":
        data = load_pack(_pack_dir(root))
        for arr in data.features.values():  # touch every page: a real full read
            float(arr[:: max(1, len(arr) // 64)].sum())
        out["rows"] = len(data.names)
        out["packed_bytes"] = data.nbytes()
    else:
        data = load_pack(_pack_dir(root))
        cfg = with_overrides(build_config({"eval": {"folds": 1}}), parse_set_options(sets))
        res = pipeline.run(data, cfg, device=device)
        out |= {
            "weighted_f1": res.weighted_f1,
            "seconds": res.seconds,
            "pseudo": sum(res.pseudo_added.values()),
            "packed_bytes": data.nbytes(),
        }
    out["wall"] = time.perf_counter() - t0
    out["peak_rss_bytes"] = peak_rss()
    print(json.dumps(out))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dir", default="/tmp/mer-full")
    parser.add_argument("--pack", help="an existing pack folder: only the trial runs")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--set", dest="sets", action="append", default=[])
    parser.add_argument("--malloc", action="append", help="tuned, none, or MMAP,TRIM bytes")
    parser.add_argument("--child")
    parser.add_argument("--skip-per-file", action="store_true")
    args = parser.parse_args()
    mallocs = args.malloc or ["tuned"]
    if args.child:
        _child(args.child, args.pack or args.dir, args.device, args.sets, mallocs[0])
        return

    if args.pack:
        root, steps = Path(args.pack), [("trial", m) for m in mallocs]
    else:
        from mer_tune.data import synthetic as synth
        from mer_tune.data.pack import load

        root = Path(args.dir)
        if not (root / "label-disdim.csv").exists():
            t0 = time.perf_counter()
            synth.write(root, "full", 0)
            print(f"generated full synthetic data in {time.perf_counter() - t0:.0f} s")
        t0 = time.perf_counter()
        load(root)
        print(f"pack (first load, includes reading every file): {time.perf_counter() - t0:.1f} s")
        loads = ["packed"] if args.skip_per_file else ["per-file", "packed"]
        steps = [(s, "tuned") for s in loads] + [("trial", m) for m in mallocs]
    for step, malloc in steps:
        cmd = [sys.executable, __file__, "--child", step, "--dir", str(root)]
        cmd += ["--device", args.device, "--malloc", malloc]
        for s in args.sets:
            cmd += ["--set", s]
        out = json.loads(
            subprocess.run(cmd, check=True, capture_output=True, text=True)
            .stdout.strip()
            .splitlines()[-1]
        )
        gib = out["peak_rss_bytes"] / 2**30
        if step == "trial":
            ratio = out["peak_rss_bytes"] / out["packed_bytes"]
            stages = ", ".join(f"{k} {v:.1f} s" for k, v in out["seconds"].items())
            print(
                f"trial (malloc {malloc}): {out['wall']:.1f} s ({stages}); weighted F1 "
                f"{out['weighted_f1']:.4f}; {out['pseudo']} pseudo-labels; peak RSS {gib:.2f} GiB "
                f"= {ratio:.2f}x the packed data"
            )
        else:
            print(
                f"load {step}: {out['wall']:.2f} s for {out['rows']} samples; peak RSS {gib:.2f} GiB"
            )


if __name__ == "__main__":
    record.run(main)
