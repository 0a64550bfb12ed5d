"""The feature extractors `mer-tune extract` runs (extract.py drives them): one class per
modality wrapping its transformers model, the per-modality loops that feed it clips in
batches, and what they share (loading a model with its trust flag and revision, atomic
writes, pooling hidden states)."""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from mer_tune.data.layout import DEFAULT_MODELS
from mer_tune.data.media import MediaError, face_images, read_audio, sample_frames
from mer_tune.errors import MerTuneError
from mer_tune.outputs import atomic_write

MODALITIES = ("visual", "audio", "text")
MIN_AUDIO = 1_600  # 0.1 s: shorter input is zero-padded (the conv front end needs 400 samples)


@dataclass(frozen=True)
class ExtractOptions:
    videos: Path
    out: Path
    transcripts: Path | None = None
    faces: Path | None = None
    models: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_MODELS))
    modalities: tuple[str, ...] = MODALITIES
    level: str = "utt"  # utt: (dim,) per clip; frame: (T, dim)
    device: str | None = None  # None: cuda when present
    dtype: str = "auto"  # auto: float16 on cuda, float32 on the CPU
    batch_size: int = 32  # frames per visual batch, transcripts per text batch
    frames: int = 8  # frames (or face crops) sampled per clip
    text_column: str = "chinese"
    max_tokens: int = 512
    audio_chunk_s: float = 30.0  # long audio goes through the model in chunks this long
    device_map: str | None = None  # for the text model, e.g. "auto" (needs accelerate)
    # Modalities whose model may run its own code (Baichuan2 needs it for text); every
    # other load passes trust_remote_code=False, so transformers refuses instead of asking.
    trust_remote_code: tuple[str, ...] = ()
    revisions: dict[str, str] = field(default_factory=dict)  # modality -> hub revision pin


@dataclass
class ModalityResult:
    modality: str
    folder: Path
    written: int = 0
    skipped: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    notes: Counter = field(default_factory=Counter)
    dim: int | None = None
    load_seconds: float = 0.0
    seconds: float = 0.0  # extraction, after the model loaded
    dropped: list[str] = field(default_factory=list)  # written, then removed: failed elsewhere


def first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def device_for(requested: str | None) -> torch.device:
    if requested == "cuda" and not torch.cuda.is_available():
        raise MerTuneError("--device cuda: no CUDA device is visible")
    return torch.device(requested or ("cuda" if torch.cuda.is_available() else "cpu"))


def dtype_for(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]


def load_model(option: str, spec: str, loader, opts: ExtractOptions, **kwargs):
    """transformers' own loaders; a hub id or a local folder, with the modality's own
    trust_remote_code and revision on every load."""
    kwargs["trust_remote_code"] = option in opts.trust_remote_code
    if opts.revisions.get(option):
        kwargs["revision"] = opts.revisions[option]
    try:
        return loader.from_pretrained(spec, **kwargs)
    except (OSError, ValueError, ImportError, KeyError, RuntimeError) as err:
        hint = f" (models with their own code need --trust-{option}-code)"
        hint = hint if "trust_remote_code" in str(err) else ""
        raise MerTuneError(f"--{option} {spec}: cannot load ({first_line(err)}){hint}") from None


def _to(model, device: torch.device, option: str, spec: str):
    try:
        return model.to(device).eval()
    except RuntimeError as err:  # e.g. out of GPU memory
        raise MerTuneError(
            f"--{option} {spec}: cannot move to {device} ({first_line(err)})"
        ) from None


def _save(folder: Path, name: str, arr: np.ndarray) -> None:
    """Written beside its final name, then renamed: a killed run leaves no partial file."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            np.save(fh, np.ascontiguousarray(arr, dtype=np.float32))

    atomic_write(folder / f"{name}.npy", write)


def done_names(folder: Path, level: str) -> set[str]:
    """Names whose output is a readable array of the level's rank; stale temp files of a
    killed run are removed."""
    if not folder.is_dir():
        return set()
    for tmp in folder.glob(".*.tmp"):
        tmp.unlink(missing_ok=True)
    done = set()
    for path in folder.glob("*.npy"):
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError, EOFError):  # EOFError: an empty file
            continue  # unreadable (e.g. cut short by a crash): extracted again
        if arr.ndim == (1 if level == "utt" else 2) and arr.size:
            done.add(path.stem)
    return done


def _prefetched(fn: Callable, items: Iterable, depth: int = 4) -> Iterator[tuple]:
    """(item, result, error) in order, decoding up to `depth` items ahead in threads while
    the model runs (PyAV releases the GIL)."""
    items = iter(items)
    with ThreadPoolExecutor(max_workers=2) as pool:
        pending = deque((item, pool.submit(fn, item)) for item in islice(items, depth))
        while pending:
            item, fut = pending.popleft()
            pending.extend((nxt, pool.submit(fn, nxt)) for nxt in islice(items, 1))
            try:
                result, error = fut.result(), None
            except Exception as err:  # one clip's failure, reported
                result, error = None, first_line(err)
            yield item, result, error


def _pool(hidden: torch.Tensor, level: str) -> np.ndarray:
    """(T, dim) -> (dim,) at utterance level."""
    hidden = hidden.float()
    return (hidden.mean(0) if level == "utt" else hidden).cpu().numpy()


def _last_four(hidden_states: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """Sum of the last four hidden layers, in float32 (fp16 sums overflow), on the last
    layer's device (with a device map the layers sit on several GPUs)."""
    device = hidden_states[-1].device
    return sum(h.to(device, torch.float32) for h in hidden_states[-4:])


# --- visual -------------------------------------------------------------------------------


class VisualModel:
    def __init__(self, spec: str, device: torch.device, dtype: torch.dtype, opts: ExtractOptions):
        from transformers import AutoImageProcessor, AutoModel

        self.processor = load_model("visual", spec, AutoImageProcessor, opts)
        model = load_model("visual", spec, AutoModel, opts, dtype=dtype)
        self.model = _to(model, device, "visual", spec)
        self.device, self.dtype = device, dtype

    @torch.inference_mode()
    def __call__(self, images: list) -> torch.Tensor:
        pixels = self.processor(images=images, return_tensors="pt")["pixel_values"]
        pixels = pixels.to(self.device, self.dtype)
        if hasattr(self.model, "get_image_features"):  # CLIP: the projected image embedding
            out = self.model.get_image_features(pixel_values=pixels)
        else:
            out = self.model(pixel_values=pixels)
        if not isinstance(out, torch.Tensor):
            for key in ("image_embeds", "pooler_output"):
                if getattr(out, key, None) is not None:
                    out = getattr(out, key)
                    break
            else:  # a vision model without pooling: its first token
                out = out.last_hidden_state[:, 0]
        return out.float()


def extract_visual(opts: ExtractOptions, clips: dict[str, Path], todo: list[str], res, model, tick):
    def decode(name: str):
        if opts.faces is not None:
            faces = face_images(opts.faces, name, opts.frames)
            if faces is not None:
                return faces, False
        return sample_frames(clips[name], opts.frames), opts.faces is not None

    batch: list[tuple[str, list]] = []

    def flush() -> None:
        images = [img for _, imgs in batch for img in imgs]
        try:
            feats = torch.cat(
                [
                    model(images[i : i + opts.batch_size])
                    for i in range(0, len(images), opts.batch_size)
                ]
            )
        except Exception as err:  # e.g. out of memory: the batch fails
            for name, _ in batch:
                res.failed[name] = f"model: {first_line(err)}"
                tick()
            batch.clear()
            return
        start = 0
        for name, imgs in batch:
            arr = _pool(feats[start : start + len(imgs)], opts.level)
            start += len(imgs)
            _save(res.folder, name, arr)
            res.written += 1
            res.dim = arr.shape[-1]
            tick()
        batch.clear()

    for name, got, error in _prefetched(decode, todo):
        if error is not None:
            res.failed[name] = error
            tick()
            continue
        images, whole_frames = got
        if whole_frames:
            res.notes["no face crops: whole frames used"] += 1
        batch.append((name, images))
        if sum(len(i) for _, i in batch) >= opts.batch_size:
            flush()
    if batch:
        flush()


# --- audio --------------------------------------------------------------------------------


class AudioModel:
    def __init__(self, spec: str, device: torch.device, dtype: torch.dtype, opts: ExtractOptions):
        from transformers import AutoFeatureExtractor, AutoModel

        self.features = load_model("audio", spec, AutoFeatureExtractor, opts)
        rate = getattr(self.features, "sampling_rate", 16_000)
        if rate != 16_000:
            raise MerTuneError(f"--audio {spec}: expects {rate} Hz input; audio is read at 16 kHz")
        self.model = _to(
            load_model("audio", spec, AutoModel, opts, dtype=dtype), device, "audio", spec
        )
        self.device, self.dtype = device, dtype
        self.chunk = max(MIN_AUDIO, int(opts.audio_chunk_s * 16_000))

    @torch.inference_mode()
    def __call__(self, wave: np.ndarray) -> torch.Tensor:
        """(T, dim) over the whole track; chunks keep attention memory bounded, and a tail
        shorter than a second joins the chunk before it."""
        bounds = list(range(0, len(wave), self.chunk)) + [len(wave)]
        if len(bounds) > 2 and bounds[-1] - bounds[-2] < 16_000:
            bounds.pop(-2)
        parts = []
        for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
            piece = wave[lo:hi]
            if len(piece) < MIN_AUDIO:
                piece = np.pad(piece, (0, MIN_AUDIO - len(piece)))
            inputs = self.features(piece, sampling_rate=16_000, return_tensors="pt")
            values = inputs["input_values"].to(self.device, self.dtype)
            out = self.model(input_values=values, output_hidden_states=True)
            parts.append(_last_four(out.hidden_states)[0])
        return torch.cat(parts)


def extract_audio(opts: ExtractOptions, clips: dict[str, Path], todo: list[str], res, model, tick):
    for name, wave, error in _prefetched(lambda n: read_audio(clips[n]), todo):
        try:
            if error is not None:
                raise MediaError(error)
            arr = _pool(model(wave), opts.level)
        except Exception as err:  # one clip's failure, reported
            res.failed[name] = first_line(err)
        else:
            _save(res.folder, name, arr)
            res.written += 1
            res.dim = arr.shape[-1]
        tick()


# --- text ---------------------------------------------------------------------------------


class TextModel:
    def __init__(self, spec: str, device: torch.device, dtype: torch.dtype, opts: ExtractOptions):
        from transformers import AutoModel, AutoTokenizer

        self.tokenizer = load_model("text", spec, AutoTokenizer, opts)
        if self.tokenizer.pad_token is None:  # decoder-only models often have none
            self.tokenizer.pad_token = self.tokenizer.eos_token or self.tokenizer.unk_token
        if self.tokenizer.pad_token is None:
            raise MerTuneError(f"--text {spec}: the tokenizer has no pad, eos or unk token")
        # Right padding: position ids of the real tokens do not depend on the batch.
        self.tokenizer.padding_side = "right"
        kwargs = {"dtype": dtype}
        if opts.device_map:
            kwargs["device_map"] = opts.device_map
        self.model = load_model("text", spec, AutoModel, opts, **kwargs).eval()
        if not opts.device_map:
            self.model = _to(self.model, device, "text", spec)
        self.device = next(self.model.parameters()).device
        config = self.model.config.get_text_config()
        self.dim = int(config.hidden_size)
        limits = [opts.max_tokens, getattr(config, "max_position_embeddings", None)]
        limits.append(getattr(self.tokenizer, "model_max_length", None))
        self.max_tokens = min(int(x) for x in limits if x)

    @torch.inference_mode()
    def __call__(self, texts: list[str]) -> list[torch.Tensor]:
        enc = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_tokens, return_tensors="pt"
        )
        out = self.model(
            input_ids=enc["input_ids"].to(self.device),
            attention_mask=enc["attention_mask"].to(self.device),
            output_hidden_states=True,
            use_cache=False,  # a decoder's key/value cache would only cost memory here
        )
        hidden = _last_four(out.hidden_states)
        mask = enc["attention_mask"].to(hidden.device).bool()
        return [h[m] for h, m in zip(hidden, mask, strict=True)]


def read_transcripts(path: Path, column: str) -> dict[str, str]:
    """`name` -> text from a transcript CSV such as MER2024's transcription-merge.csv."""
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except (OSError, ValueError, UnicodeDecodeError) as err:  # ValueError: empty, malformed
        raise MerTuneError(f"{path}: cannot read transcripts ({first_line(err)})") from None
    for col in ("name", column):
        if col not in table.columns:
            raise MerTuneError(
                f"{path}: no '{col}' column (columns: {', '.join(table.columns)}); "
                "choose the text with --text-column"
            )
    dupes = table["name"][table["name"].duplicated()]
    if len(dupes):
        raise MerTuneError(f"{path}: name '{dupes.iloc[0]}' appears more than once")
    return dict(zip(table["name"], table[column].str.strip(), strict=True))


def extract_text(opts: ExtractOptions, texts: dict[str, str], todo: list[str], res, model, tick):
    res.dim = model.dim
    empty = np.zeros(model.dim if opts.level == "utt" else (1, model.dim), np.float32)
    spoken = []
    for name in todo:
        if texts.get(name):
            spoken.append(name)
            continue
        res.notes[
            "no transcript text: zeros" if name in texts else "not in transcripts: zeros"
        ] += 1
        _save(res.folder, name, empty)
        res.written += 1
        tick()
    for i in range(0, len(spoken), opts.batch_size):
        names = spoken[i : i + opts.batch_size]
        try:
            hidden = model([texts[n] for n in names])
        except Exception as err:  # e.g. out of memory: the batch fails
            for name in names:
                res.failed[name] = f"model: {first_line(err)}"
                tick()
            continue
        for name, h in zip(names, hidden, strict=True):
            if not len(h):  # text that tokenizes to nothing
                res.notes["no tokens: zeros"] += 1
                _save(res.folder, name, empty)
            else:
                _save(res.folder, name, _pool(h, opts.level))
            res.written += 1
            tick()
