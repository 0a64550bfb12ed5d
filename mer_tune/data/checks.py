"""`mer-tune data check`: what a dataset holds, and what is wrong with it."""

from __future__ import annotations

from pathlib import Path

from mer_tune.data.layout import LABELLED, MODALITIES, TEST, UNLABELLED, DataOptions, read_folders
from mer_tune.errors import MerTuneError


def check_report(folder: str | Path, opts: DataOptions) -> tuple[str, bool]:
    """A readable report, and whether the dataset is usable."""
    lines = [f"dataset: {folder}"]
    try:
        data = read_folders(folder, opts)
    except MerTuneError as err:
        lines.append(f"problem: {err}")
        return "\n".join(lines), False
    for split in (LABELLED, UNLABELLED, TEST):
        lines.append(f"{split:>10}: {int((data.split == split).sum())} samples")
    lines.append(
        "labelled per class: " + ", ".join(f"{c} {n}" for c, n in data.class_counts().items())
    )
    lines.append(
        "dims: " + ", ".join(f"{m} {data.dims[m]} ({opts.folders[m]})" for m in MODALITIES)
    )
    problems = []
    if not (data.split == UNLABELLED).any():
        problems.append("note: the unlabelled pool is empty: self-training will be skipped")
    lines.extend(problems or ["no problems found"])
    return "\n".join(lines), True
