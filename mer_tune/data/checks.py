"""`mer-tune data check`: what a dataset holds, and what is wrong with it."""

from __future__ import annotations

from pathlib import Path

from mer_tune.data.layout import (
    LABELLED,
    MODALITIES,
    TEST,
    UNLABELLED,
    DataOptions,
    read_folders,
)
from mer_tune.data.pack import FP16_MAX_ERROR, default_pack_dir, fp16_error, pack_damage
from mer_tune.data.releases import LAYOUTS, find_layout
from mer_tune.errors import MerTuneError


def check_report(folder: str | Path, opts: DataOptions) -> tuple[str, bool]:
    """A readable report, and whether the dataset is usable."""
    lines = [f"dataset: {folder}"]
    try:
        layout = find_layout(Path(folder))
        files = [f for f in LAYOUTS[layout].values() if (Path(folder) / f).exists()]
        lines.append(f"layout: {layout}" + (f" ({', '.join(files)})" if files else ""))
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
    for m in MODALITIES:
        error = fp16_error(data.features[m], data.std[m])
        if error > FP16_MAX_ERROR:
            how = "overflow" if error == float("inf") else f"move a dimension by {error:.3g} std"
            problems.append(
                f"note: {m} features are stored as float32 (float16 would {how}): "
                "twice the memory of float16"
            )
    if not (data.split == UNLABELLED).any():
        problems.append("note: the unlabelled pool is empty: self-training will be skipped")
    pack_dir = default_pack_dir(Path(folder), opts)
    damage = pack_damage(pack_dir) if (pack_dir / "meta.json").exists() else None
    if damage:
        problems.append(f"note: the packed copy {pack_dir} is damaged ({damage}): the next "
                        "run packs it again (or `mer-tune data pack --force`)")  # fmt: skip
    lines.extend(problems or ["no problems found"])
    return "\n".join(lines), True
