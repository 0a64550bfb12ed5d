"""Decoding clips with PyAV (no command-line ffmpeg needed): sampled RGB frames, the audio
track as 16 kHz mono, and face-crop images from a face folder."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
from PIL import Image

from mer_tune.errors import MerTuneError

VIDEO_EXTS = {".mp4", ".avi", ".mkv", ".mov", ".webm", ".flv", ".mpg", ".mpeg", ".wmv", ".m4v"}
IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp"}
AUDIO_RATE = 16_000


class MediaError(Exception):
    """A clip that cannot be decoded; reported for that clip while the others go on."""


def list_clips(videos: Path) -> dict[str, Path]:
    """Clip name (file stem) -> path, for every video file directly inside `videos`."""
    if not videos.is_dir():
        raise MerTuneError(f"{videos}: videos folder not found")
    clips: dict[str, Path] = {}
    for path in sorted(videos.iterdir()):
        if path.suffix.lower() not in VIDEO_EXTS or not path.is_file():
            continue
        if path.stem in clips:
            raise MerTuneError(f"{path}: clip name '{path.stem}' also used by {clips[path.stem]}")
        clips[path.stem] = path
    if not clips:
        raise MerTuneError(f"{videos}: no video files ({', '.join(sorted(VIDEO_EXTS))})")
    return clips


def uniform_indices(total: int, n: int) -> list[int]:
    """`n` indices spread evenly over `total` items (all of them when there are fewer)."""
    if total <= n:
        return list(range(total))
    return [int((i + 0.5) * total / n) for i in range(n)]


def _open(path: Path) -> av.container.InputContainer:
    try:
        return av.open(str(path))
    except (av.error.FFmpegError, OSError) as err:
        raise MediaError(f"cannot open: {err}") from None


def _packet_count(path: Path) -> int:
    """Packets in the first video stream, about one per frame. Demuxing without decoding
    is cheap, and unlike the header's frame count it is always there."""
    with _open(path) as container:
        if not container.streams.video:
            raise MediaError("no video stream")
        return sum(1 for p in container.demux(container.streams.video[0]) if p.size)


def _decode_at(path: Path, wanted: set[int]) -> tuple[list[Image.Image], int]:
    """The frames at `wanted` indices, and how many frames were decoded."""
    images: list[Image.Image] = []
    count = 0
    with _open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for i, frame in enumerate(container.decode(stream)):
            count = i + 1
            if i in wanted:
                images.append(frame.to_image())
                if len(images) == len(wanted):
                    break
    return images, count


def sample_frames(path: Path, n: int) -> list[Image.Image]:
    """`n` frames spread evenly over the clip (all of them when it has fewer), as RGB."""
    try:
        wanted = set(uniform_indices(_packet_count(path), n))
        images, decoded = _decode_at(path, wanted)
        if len(images) < len(wanted) and decoded:  # fewer frames than packets: spread again
            images, _ = _decode_at(path, set(uniform_indices(decoded, n)))
    except av.error.FFmpegError as err:
        raise MediaError(f"cannot decode video: {err}") from None
    if not images:
        raise MediaError("no video frames")
    return images


def read_audio(path: Path, rate: int = AUDIO_RATE) -> np.ndarray:
    """The first audio track, resampled to `rate` Hz mono float32."""
    chunks: list[np.ndarray] = []
    try:
        with _open(path) as container:
            if not container.streams.audio:
                raise MediaError("no audio track")
            resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
            for frame in container.decode(container.streams.audio[0]):
                chunks.extend(f.to_ndarray().reshape(-1) for f in resampler.resample(frame))
            chunks.extend(f.to_ndarray().reshape(-1) for f in resampler.resample(None))
    except av.error.FFmpegError as err:
        raise MediaError(f"cannot decode audio: {err}") from None
    if not chunks or sum(len(c) for c in chunks) == 0:
        raise MediaError("empty audio track")
    return np.concatenate(chunks).astype(np.float32, copy=False)


def face_images(faces: Path, name: str, n: int) -> list[Image.Image] | None:
    """`n` face crops spread evenly over `faces/<name>/` (searched recursively, as OpenFace
    writes `<name>/<name>_aligned/*.bmp`); None when the clip has no crops."""
    folder = faces / name
    if not folder.is_dir():
        return None
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTS)
    if not files:
        return None
    out = []
    for i in uniform_indices(len(files), n):
        try:
            with Image.open(files[i]) as img:
                out.append(img.convert("RGB"))
        except OSError as err:
            raise MediaError(f"{files[i]}: cannot read image ({err})") from None
    return out
