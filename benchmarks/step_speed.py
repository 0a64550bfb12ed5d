"""The fused training step against the general-purpose one, side by side in one process.

    python benchmarks/step_speed.py --threads 1 --seeds 3

Fused (the default): TokenLayer (length-1 attention as the value and output projections),
the NT-Xent terms of one width in one batched product with a one-product gradient, and
fused Adam on the CPU. General (MER_TUNE_FUSED=0): nn.TransformerEncoderLayer, one NT-Xent
call per term, Adam's per-parameter loop. Both draw the same random numbers.

  1. ms per finetuning step (the supervised loss with its contrastive terms, batch 256,
     the default config, synthetic:tiny), each path timed over the same batches.
  2. The default tiny trial (`mer-tune run --data synthetic:tiny --folds 1`'s pipeline)
     with config seeds 0 .. --seeds - 1, the two paths alternated: seconds per stage, the
     weighted F1 (paired by seed), and every epoch's loss compared to 4 digits. Training
     is chaotic: rounding differences of 1e-7 grow over the finetuning epochs, so the F1
     of one seed may differ; the paired mean over seeds says whether the change is neutral.
  3. With --commands: what a user times, each command run under both paths in turn:
     `mer-tune run --data synthetic:tiny --folds 1` and `make run`'s search
     (`mer-tune search --space thresholds`, 8 trials on the built-in data, synthetic:small).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import record


def _mode(fused: bool) -> None:
    os.environ["MER_TUNE_FUSED"] = "1" if fused else "0"


def finetune_steps(data, cfg):
    """A function running one finetuning step (train.supervised_loss: the heads'
    cross-entropy plus the contrastive terms) per batch of labelled samples it is given,
    on a fresh model, in the current MER_TUNE_FUSED mode."""
    import torch

    from mer_tune.method import train
    from mer_tune.method.steps import Stepper

    feats = train.Features(data, torch.device("cpu"))
    model = train.make_model(data, cfg.model, 0, feats.device)
    loss_fn = train.supervised_loss(
        model, feats, train.Steps.of(cfg), torch.Generator().manual_seed(0)
    )
    labels = torch.as_tensor(np.asarray(data.labels))
    stepper = Stepper(model, feats.batch, loss_fn, cfg.optim, feats.device, labels)
    return lambda batches: stepper.epoch(batches, batches)  # a sample's label at its index


def finetune_step_ms(data, cfg, batches: list[np.ndarray]) -> float:
    """ms per finetuning step over `batches`, after three warm-up steps, in the current
    MER_TUNE_FUSED mode."""
    steps = finetune_steps(data, cfg)
    steps(batches[:3])  # warm-up
    t0 = time.perf_counter()
    steps(batches)
    return (time.perf_counter() - t0) / len(batches) * 1000


def tiny_batches(steps: int):
    """synthetic:tiny, the default config and `steps` seeded batches of labelled samples."""
    from mer_tune.data.layout import LABELLED
    from mer_tune.data.resolve import resolve
    from mer_tune.method.config import build_config

    data, cfg = resolve("synthetic:tiny"), build_config()
    rng = np.random.default_rng(0)
    lab = data.indices(LABELLED)
    return data, cfg, [np.sort(rng.choice(lab, cfg.optim.batch_size)) for _ in range(steps)]


def step_ms(steps: int) -> dict[str, float]:
    data, cfg, batches = tiny_batches(steps)
    out = {}
    for fused in (False, True, False, True):
        _mode(fused)
        ms = finetune_step_ms(data, cfg, batches)
        key = "fused" if fused else "general"
        out[key] = min(out.get(key, ms), ms)  # the quieter of two tries
    return out


def tiny_trial(fused: bool, seed: int = 0) -> dict:
    from mer_tune.data.resolve import resolve
    from mer_tune.method import pipeline
    from mer_tune.method.config import build_config, with_overrides

    _mode(fused)
    losses: list[float] = []

    def report(kind: str, **f) -> None:
        if kind == "epoch":
            losses.append(f.get("pretrain_loss", f.get("train_loss")))

    t0 = time.perf_counter()
    res = pipeline.run(
        resolve("synthetic:tiny"),
        with_overrides(build_config(), {"eval.folds": 1, "seed": seed}),
        report=report,
    )
    return {
        "seconds": time.perf_counter() - t0,
        "stages": res.seconds,
        "f1": res.weighted_f1,
        "losses": losses,
    }


def commands() -> None:
    exe = Path(sys.executable).with_name("mer-tune")
    work = Path(tempfile.mkdtemp(prefix="mer-tune-step-bench-"))
    jobs = {
        "mer-tune run --data synthetic:tiny --folds 1": ["run", "--data", "synthetic:tiny"]
        + ["--folds", "1", "--out", str(work / "run")],
        "mer-tune search --space thresholds (make run)": ["search", "--space", "thresholds"]
        + ["--storage", str(work / "runs"), "--tracking-uri", f"sqlite:///{work / 'mlflow.db'}"],
    }
    for label, args in jobs.items():
        seconds = {}
        for fused in (False, True):
            env = os.environ | {"MER_TUNE_FUSED": "1" if fused else "0"}
            t0 = time.perf_counter()
            subprocess.run([str(exe), *args], env=env, check=True, capture_output=True)
            seconds["fused" if fused else "general"] = time.perf_counter() - t0
        ratio = seconds["general"] / seconds["fused"]
        print(
            f"{label}: general {seconds['general']:.1f} s, fused {seconds['fused']:.1f} s, "
            f"ratio {ratio:.2f}x"
        )
    shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--commands", action="store_true", help="Only the user's commands.")
    args = parser.parse_args()
    if args.commands:
        commands()
        return

    import torch

    from mer_tune.method.malloc import tune_malloc

    tune_malloc()  # as a trial's process does
    torch.set_num_threads(args.threads)
    ms = step_ms(args.steps)
    print(
        f"finetuning step, batch 256, {args.threads} thread(s): general {ms['general']:.1f} ms, "
        f"fused {ms['fused']:.1f} ms, ratio {ms['general'] / ms['fused']:.2f}x"
    )
    runs = {"general": [], "fused": []}
    for seed in range(args.seeds):
        for fused in (False, True):
            runs["fused" if fused else "general"].append(tiny_trial(fused, seed))
    for name, rs in runs.items():
        secs = [round(r["seconds"], 1) for r in rs]
        stages = {k: np.mean([r["stages"][k] for r in rs]) for k in rs[0]["stages"]}
        text = ", ".join(f"{k} {v:.1f} s" for k, v in stages.items())
        f1s = ", ".join(f"{r['f1']:.4f}" for r in rs)
        print(f"tiny trial, {name}: {np.mean(secs):.1f} s (runs {secs}); {text}; F1 by seed {f1s}")
    g, f = runs["general"][0], runs["fused"][0]
    rel = [abs(a - b) / abs(a) for a, b in zip(g["losses"], f["losses"], strict=True)]
    diff = np.array(
        [b["f1"] - a["f1"] for a, b in zip(runs["general"], runs["fused"], strict=True)]
    )
    ratio = np.mean([r["seconds"] for r in runs["general"]]) / np.mean(
        [r["seconds"] for r in runs["fused"]]
    )
    se = diff.std(ddof=1) / np.sqrt(len(diff)) if len(diff) > 1 else float("nan")
    print(
        f"tiny trial ratio general / fused: {ratio:.2f}x; seed 0's epoch losses (pretraining, "
        f"then finetuning, then retraining) equal to 4 digits: {sum(r < 5e-5 for r in rel)} of "
        f"{len(rel)}, relative differences {', '.join(f'{r:.0e}' for r in rel)}; "
        f"F1 fused - general {diff.mean():+.4f} +- {se:.4f} (mean +- s.e. over {len(diff)} seeds)"
    )


if __name__ == "__main__":
    record.run(main)
