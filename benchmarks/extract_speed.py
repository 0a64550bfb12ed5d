"""Clips per second of `mer-tune extract`, decoding included, on generated MER-like clips
(3 s, 25 fps, 320x240, AAC stereo) with random-weight models.

    python benchmarks/extract_speed.py --size tiny --clips 48
    python benchmarks/extract_speed.py --size real --clips 8 --modalities visual,audio
    python benchmarks/extract_speed.py --size real --clips 200 --device cuda   # on a GPU

--size real builds CLIP ViT-L/14, HuBERT-large and a 13B Llama-shaped text model
(Baichuan2-13B's shape; half precision, needs a GPU with ~30 GB) with random weights.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import record
import torch

from mer_tune.data.extract import ExtractOptions, extract
from mer_tune.data.synthetic_media import write_clip, write_models, write_transcripts


def machine() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    cpu = platform.processor() or "CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {torch.get_num_threads()} threads"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", choices=["tiny", "real"], default="tiny")
    parser.add_argument("--clips", type=int, default=48)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--modalities", default="visual,audio,text")
    parser.add_argument("--device", choices=["cpu", "cuda"])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--frames", type=int, default=8)
    args = parser.parse_args()
    modalities = tuple(args.modalities.split(","))

    work = Path(tempfile.mkdtemp(prefix="mer-tune-extract-bench-"))
    names = [f"sample_{i:08d}" for i in range(args.clips)]
    (work / "videos").mkdir()
    for i, name in enumerate(names):
        write_clip(
            work / "videos" / f"{name}.mp4", seconds=args.seconds, fps=25, size=(320, 240), seed=i
        )
    write_transcripts(work / "transcripts.csv", names)
    t0 = time.perf_counter()
    models = write_models(work / "models", args.size, modalities)
    print(f"models written in {time.perf_counter() - t0:.0f} s")

    opts = ExtractOptions(
        videos=work / "videos",
        out=work / "out",
        transcripts=work / "transcripts.csv",
        models={m: str(p) for m, p in models.items()},
        modalities=modalities,
        device=args.device,
        batch_size=args.batch_size,
        frames=args.frames,
    )
    t0 = time.perf_counter()
    results = extract(opts)
    wall = time.perf_counter() - t0
    print(f"{machine()}; {args.clips} clips of {args.seconds:g} s, {args.size} models")
    for r in results:
        assert not r.failed, r.failed
        print(
            f"  {r.modality:6s} {r.written / r.seconds:8.2f} clips/s "
            f"(model load {r.load_seconds:.1f} s, dim {r.dim})"
        )
    print(f"  all    {args.clips / wall:8.2f} clips/s end to end, loads included ({wall:.1f} s)")


if __name__ == "__main__":
    record.run(main)
