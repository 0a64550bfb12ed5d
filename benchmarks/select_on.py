"""Epoch selection on the scored fold (MERTools) vs on an inner slice: what each reports
and what each is really worth on the test names.

    python benchmarks/select_on.py --data synthetic:small --folds 5

`mer-tune run` with the default config twice, `eval.select_on=scored` and `inner`, on the
same folds. Each reports its cross-validated weighted F1 (mean of folds, ± s.e.). The
fold models also predict the 500 test names of the synthetic data, whose true labels the
generator knows: that truth F1 is what the models are worth on data that chose nothing.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import record
from sklearn.metrics import f1_score


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default="synthetic:small")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()

    import torch

    from mer_tune.data.layout import TEST
    from mer_tune.data.resolve import resolve
    from mer_tune.method import pipeline
    from mer_tune.method.config import build_config, parse_set_options, with_overrides

    torch.set_num_threads(2)
    data = resolve(args.data)
    test = data.indices(TEST)
    truth = data.hidden_labels[test]
    known = truth >= 0
    base = with_overrides(build_config(), parse_set_options(args.set) | {"eval.folds": args.folds})
    fold_scores = {}
    for mode in ("scored", "inner"):
        cfg = with_overrides(base, {"eval.select_on": mode})
        t0 = time.perf_counter()
        res = pipeline.run(data, cfg, predict_idx=test)
        pred = res.extra_probs.argmax(1)
        truth_f1 = f1_score(truth[known], pred[known], average="weighted")
        f = np.asarray(res.fold_f1)
        fold_scores[mode] = f
        print(
            f"select_on={mode:6s}: CV weighted F1 {f.mean():.4f} ± {f.std(ddof=1) / np.sqrt(len(f)):.4f} "
            f"(folds {', '.join(f'{v:.4f}' for v in f)}); truth F1 on {known.sum()} test names "
            f"{truth_f1:.4f}; CV minus truth {f.mean() - truth_f1:+.4f}; {time.perf_counter() - t0:.0f} s",
            flush=True,
        )
    d = fold_scores["scored"] - fold_scores["inner"]
    print(
        f"scored minus inner, paired over {len(d)} folds: {d.mean():+.4f} "
        f"± {d.std(ddof=1) / np.sqrt(len(d)):.4f}"
    )


if __name__ == "__main__":
    record.run(main)
