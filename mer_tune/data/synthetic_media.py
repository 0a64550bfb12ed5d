"""Generated clips and randomly initialised extractor models, to run `mer-tune extract`
without a model hub or real videos (the tests and the extraction benchmark use them).

`size="tiny"` models have a few thousand weights; `size="real"` ones have the shapes of
the MER2024 extractors (CLIP ViT-L/14, HuBERT-large, a 13B Llama-shaped text model like
Baichuan2-13B) with random weights: their speed is the real models' speed.
"""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import torch

TINY_DIMS = {"visual": 12, "audio": 16, "text": 20}
WORDS = "我很开心难过生气害怕惊讶今天的天气好"


def write_clip(
    path: Path,
    seconds: float = 1.0,
    fps: int = 10,
    size: tuple[int, int] = (32, 32),
    audio: bool = True,
    rate: int = 44_100,
    seed: int = 0,
) -> None:
    """An H.264 clip of noise frames with a stereo AAC tone (extraction resamples it)."""
    rng = np.random.default_rng(seed)
    width, height = size
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        sound = out.add_stream("aac", rate=rate, layout="stereo") if audio else None
        for _ in range(round(seconds * fps)):
            img = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
            out.mux(video.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        out.mux(video.encode())
        if sound is None:
            return
        n = round(seconds * rate)
        tone = 0.3 * np.sin(2 * np.pi * (220 + 40 * seed) * np.arange(n) / rate)
        wave = np.stack([tone, tone]).astype(np.float32)
        for start in range(0, n, 1024):
            frame = av.AudioFrame.from_ndarray(
                np.ascontiguousarray(wave[:, start : start + 1024]), format="fltp", layout="stereo"
            )
            frame.sample_rate, frame.pts = rate, start
            out.mux(sound.encode(frame))
        out.mux(sound.encode())


def write_transcripts(path: Path, names: list[str], seed: int = 0) -> None:
    """`name,chinese,english` with short random texts; the second name's text is empty."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    texts = ["".join(rng.choice(list(WORDS), size=1 + i % 5)) for i in range(len(names))]
    if len(texts) > 1:
        texts[1] = ""
    pd.DataFrame({"name": names, "chinese": texts, "english": "x"}).to_csv(path, index=False)


def write_models(root: Path, size: str = "tiny", modalities=("visual", "audio", "text")) -> dict:
    """Save random-weight extractor models under `root`; returns modality -> folder."""
    torch.manual_seed(0)
    root.mkdir(parents=True, exist_ok=True)
    real = size == "real"
    folders = {}
    if "visual" in modalities:
        folders["visual"] = _clip(root / f"{size}-clip", real)
    if "audio" in modalities:
        folders["audio"] = _hubert(root / f"{size}-hubert", real)
    if "text" in modalities:
        folder = folders["text"] = root / f"{size}-text"
        folder.mkdir(parents=True, exist_ok=True)
        vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
        (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
        from transformers import BertTokenizer

        BertTokenizer(vocab_file=str(folder / "vocab.txt")).save_pretrained(folder)
        _text_model(real, len(vocab)).save_pretrained(folder)
    return folders


SMALL = dict(intermediate_size=32, num_attention_heads=2)


def _clip(folder: Path, real: bool) -> Path:
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    if real:  # ViT-L/14 at 224 px, 768-d projection
        vision = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24)
        vision |= dict(num_attention_heads=16, image_size=224, patch_size=14)
        config = CLIPConfig(vision_config=vision, projection_dim=768)
        crop = 224
    else:
        vision = dict(hidden_size=16, num_hidden_layers=2, image_size=32, patch_size=8, **SMALL)
        text = dict(hidden_size=16, num_hidden_layers=1, vocab_size=100, **SMALL)
        config = CLIPConfig(
            text_config=text, vision_config=vision, projection_dim=TINY_DIMS["visual"]
        )
        crop = 32
    CLIPModel(config).save_pretrained(folder)
    CLIPImageProcessor(
        size={"shortest_edge": crop}, crop_size={"height": crop, "width": crop}
    ).save_pretrained(folder)
    return folder


def _hubert(folder: Path, real: bool) -> Path:
    from transformers import HubertConfig, HubertModel, Wav2Vec2FeatureExtractor

    if real:  # hubert-large: 1024-d, 24 layers, layer-norm conv front end
        config = HubertConfig(
            hidden_size=1024,
            num_hidden_layers=24,
            num_attention_heads=16,
            intermediate_size=4096,
            feat_extract_norm="layer",
            do_stable_layer_norm=True,
        )
    else:
        config = HubertConfig(
            hidden_size=TINY_DIMS["audio"],
            num_hidden_layers=4,
            conv_dim=(8,) * 7,
            num_conv_pos_embeddings=16,
            num_conv_pos_embedding_groups=4,
            **SMALL,
        )
    HubertModel(config).save_pretrained(folder)
    Wav2Vec2FeatureExtractor(sampling_rate=16_000).save_pretrained(folder)
    return folder


def _text_model(real: bool, vocab: int):
    from transformers import BertConfig, BertModel, LlamaConfig, LlamaModel

    if not real:
        config = BertConfig(
            vocab_size=vocab,
            hidden_size=TINY_DIMS["text"],
            num_hidden_layers=4,
            intermediate_size=32,
            num_attention_heads=2,
        )
        return BertModel(config)
    # Baichuan2-13B's shape (a Llama-style decoder, 5120-d, 40 layers); built in half
    # precision on the GPU when there is one, since 13B float32 weights need 52 GB.
    config = LlamaConfig(
        vocab_size=125_696,
        hidden_size=5120,
        intermediate_size=13_696,
        num_hidden_layers=40,
        num_attention_heads=40,
        max_position_embeddings=4096,
    )
    device = "cuda" if torch.cuda.is_available() else "cpu"
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float16)
    try:
        with torch.device(device):
            return LlamaModel(config)
    finally:
        torch.set_default_dtype(default)
