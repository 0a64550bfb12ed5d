"""`mer-tune extract`: the three MER2024 feature sets from raw clips, with transformers.

    visual  frames (or face crops) -> CLIP image features, mean over frames
    audio   16 kHz mono track -> HuBERT-style model, sum of the last 4 hidden layers, mean over time
    text    transcript -> any AutoModel, sum of the last 4 hidden layers, mean over tokens

Writes `OUT/features/<model-name>-UTT/<name>.npy` (shape (dim,)) or `-FRA` (shape (T, dim)),
the layout `--data` reads. One modality at a time, so only one model is in memory (a 13B
text model needs the whole card). Existing outputs are skipped, each file is written
atomically, and a clip that fails is reported while the others go on.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
import transformers

from mer_tune.data import extractors
from mer_tune.data.extractors import (
    AudioModel,
    ExtractOptions,
    ModalityResult,
    TextModel,
    VisualModel,
    read_transcripts,
)
from mer_tune.data.layout import model_folder_name
from mer_tune.data.media import list_clips
from mer_tune.errors import MerTuneError

__all__ = ["ExtractOptions", "ModalityResult", "extract"]

MODELS = {"visual": VisualModel, "audio": AudioModel, "text": TextModel}


def extract(
    opts: ExtractOptions, progress: Callable[[str, int], Callable[[], None]] | None = None
) -> list[ModalityResult]:
    """Extract every modality in `opts.modalities` for every clip in `opts.videos`.

    `progress(label, total)` returns a function called once per clip done."""
    if opts.batch_size < 1 or opts.frames < 1:
        raise MerTuneError("--batch-size and --frames must be at least 1")
    clips = list_clips(opts.videos)
    if opts.faces is not None and not opts.faces.is_dir():
        raise MerTuneError(f"{opts.faces}: face folder not found")
    texts = None
    if "text" in opts.modalities:
        if opts.transcripts is None:
            raise MerTuneError(
                "text features need --transcripts (or leave text out with --modalities)"
            )
        texts = read_transcripts(opts.transcripts, opts.text_column)
        if not set(texts) & set(clips):
            raise MerTuneError(
                f"{opts.transcripts}: no name matches a clip (clip names look like "
                f"'{next(iter(clips))}', transcript names like '{next(iter(texts), '')}')"
            )
    device = extractors.device_for(opts.device)
    transformers.utils.logging.disable_progress_bar()  # ours shows progress per clip
    dtype = extractors.dtype_for(opts.dtype, device)
    from transformers import AutoConfig

    for modality in opts.modalities:  # a bad model fails now, not after hours of another
        spec = opts.models[modality]
        extractors.load_model(modality, spec, AutoConfig, opts)
    results = []
    for modality in opts.modalities:
        folder = opts.out / "features" / model_folder_name(opts.models[modality], opts.level)
        res = ModalityResult(modality, folder)
        done = extractors.done_names(folder, opts.level)
        todo = [n for n in clips if n not in done]
        res.skipped = len(clips) - len(todo)
        results.append(res)
        if not todo:
            continue
        t0 = time.perf_counter()
        model = MODELS[modality](opts.models[modality], device, dtype, opts)
        res.load_seconds = time.perf_counter() - t0
        folder.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        tick = progress(f"{modality} ({folder.name})", len(todo)) if progress else lambda: None
        if modality == "visual":
            extractors.extract_visual(opts, clips, todo, res, model, tick)
        elif modality == "audio":
            extractors.extract_audio(opts, clips, todo, res, model, tick)
        else:
            extractors.extract_text(opts, texts, todo, res, model, tick)
        res.seconds = time.perf_counter() - t0
        del model  # free the card before the next modality's model loads
        if device.type == "cuda":
            torch.cuda.empty_cache()
    _drop_incomplete(results)
    return results


def _drop_incomplete(results: list[ModalityResult]) -> None:
    """A clip that failed in any modality is written in none: the folder stays a dataset
    that `data check` and `run` accept (a rerun retries the clip in every modality)."""
    failed = set().union(*(r.failed for r in results))
    for r in results:
        gone = sorted(n for n in failed if n not in r.failed and (r.folder / f"{n}.npy").exists())
        for name in gone:
            (r.folder / f"{name}.npy").unlink()
        r.dropped = gone
