"""`mer-tune extract` with tiny randomly initialised CLIP, HuBERT and BERT models saved to a
temp folder, on tiny generated clips with sound."""

from __future__ import annotations

import av
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import FAST
from PIL import Image
from test_cli import run_cli

from mer_tune.extract import ExtractOptions, extract
from mer_tune.media import uniform_indices

CLASSES = ["neutral", "angry", "happy", "sad", "worried", "surprise"]
WORDS = "我很开心难过生气害怕惊讶今天的天气好"
DIMS = {"visual": 12, "audio": 16, "text": 20}  # projection_dim, hidden sizes below


def write_clip(path, seconds=1.0, fps=10, audio=True, rate=44100, seed=0) -> None:
    """A 32x32 H.264 clip of noise frames with a stereo AAC sine (resampled on read)."""
    rng = np.random.default_rng(seed)
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = 32, 32, "yuv420p"
        sound = out.add_stream("aac", rate=rate, layout="stereo") if audio else None
        for _ in range(int(seconds * fps)):
            img = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
            for packet in video.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in video.encode():
            out.mux(packet)
        if sound is not None:
            n = int(seconds * rate)
            wave = (0.3 * np.sin(2 * np.pi * (220 + 40 * seed) * np.arange(n) / rate)).astype(
                np.float32
            )
            for start in range(0, n, 1024):
                block = np.ascontiguousarray(np.stack([wave, wave])[:, start : start + 1024])
                frame = av.AudioFrame.from_ndarray(block, format="fltp", layout="stereo")
                frame.sample_rate, frame.pts = rate, start
                for packet in sound.encode(frame):
                    out.mux(packet)
            for packet in sound.encode():
                out.mux(packet)


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    from transformers import (
        BertConfig,
        BertModel,
        BertTokenizer,
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        HubertConfig,
        HubertModel,
        Wav2Vec2FeatureExtractor,
    )

    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    layer = dict(intermediate_size=32, num_attention_heads=2)
    CLIPModel(
        CLIPConfig(
            text_config=dict(hidden_size=16, num_hidden_layers=1, vocab_size=100, **layer),
            vision_config=dict(
                hidden_size=16, num_hidden_layers=2, image_size=32, patch_size=8, **layer
            ),
            projection_dim=DIMS["visual"],
        )
    ).save_pretrained(root / "tiny-clip")
    CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    ).save_pretrained(root / "tiny-clip")
    HubertModel(
        HubertConfig(
            hidden_size=DIMS["audio"],
            num_hidden_layers=4,
            conv_dim=(8,) * 7,
            num_conv_pos_embeddings=16,
            num_conv_pos_embedding_groups=4,
            **layer,
        )
    ).save_pretrained(root / "tiny-hubert")
    Wav2Vec2FeatureExtractor(sampling_rate=16000).save_pretrained(root / "tiny-hubert")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    text = root / "tiny-text"
    text.mkdir()
    (text / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    BertTokenizer(vocab_file=str(text / "vocab.txt")).save_pretrained(text)
    BertModel(
        BertConfig(vocab_size=len(vocab), hidden_size=DIMS["text"], num_hidden_layers=4, **layer)
    ).save_pretrained(text)
    return root


def model_args(models) -> list[str]:
    return [
        f"--{m}={models / n}"
        for m, n in [("visual", "tiny-clip"), ("audio", "tiny-hubert"), ("text", "tiny-text")]
    ]


def write_transcripts(path, names) -> None:
    rng = np.random.default_rng(0)
    texts = ["".join(rng.choice(list(WORDS), size=1 + i % 5)) for i in range(len(names))]
    texts[1] = ""  # empty text gives zeros
    pd.DataFrame({"name": names, "chinese": texts, "english": "x"}).to_csv(path, index=False)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """14 clips: 2 labelled per class and 2 unlabelled, with transcripts and labels."""
    root = tmp_path_factory.mktemp("clips")
    (root / "videos").mkdir()
    names = [f"sample_{i:08d}" for i in range(14)]
    for i, name in enumerate(names):
        write_clip(root / "videos" / f"{name}.mp4", seconds=0.6 + 0.1 * i, seed=i)
    write_transcripts(root / "transcription-merge.csv", names)
    return root, names


def test_extract_writes_the_layout_that_data_check_and_run_accept(
    tiny_models, clips, tmp_path, capsys
):
    root, names = clips
    out = tmp_path / "dataset"
    args = ["extract", "--videos", str(root / "videos"), "--out", str(out)]
    args += ["--transcripts", str(root / "transcription-merge.csv"), "--frames", "3"]
    code, stdout, _ = run_cli([*args, "--batch-size", "4", *model_args(tiny_models)], capsys)
    assert code == 0, stdout
    folders = {"visual": "tiny-clip-UTT", "audio": "tiny-hubert-UTT", "text": "tiny-text-UTT"}
    for modality, folder in folders.items():
        files = sorted((out / "features" / folder).glob("*.npy"))
        assert [f.stem for f in files] == names
        arrays = [np.load(f) for f in files]
        assert {a.shape for a in arrays} == {(DIMS[modality],)}
        assert all(np.isfinite(a).all() for a in arrays)
    assert not np.load(out / "features" / folders["text"] / f"{names[1]}.npy").any()
    assert np.load(out / "features" / folders["text"] / f"{names[2]}.npy").any()
    # Different clips give different features (the model really saw each clip).
    audio = [np.load(out / "features" / folders["audio"] / f"{n}.npy") for n in names[:2]]
    assert not np.allclose(audio[0], audio[1])

    labels = [CLASSES[i % 6] for i in range(12)]
    pd.DataFrame({"name": names[:12], "discrete": labels}).to_csv(
        out / "label-disdim.csv", index=False
    )
    hint = [f"--{m}-features={f}" for m, f in folders.items()]
    assert f"mer-tune data check {out} " + " ".join(h.replace("=", " ") for h in hint) in stdout
    code, stdout, _ = run_cli(["data", "check", str(out), *hint], capsys)
    assert code == 0, stdout
    cfg = tmp_path / "fast.yaml"
    cfg.write_text(yaml.safe_dump(FAST))
    run_out = tmp_path / "run"
    run_args = ["run", "--data", str(out), "--config", str(cfg), "--out", str(run_out), *hint]
    code, stdout, _ = run_cli(run_args, capsys)
    assert code == 0, stdout
    assert (run_out / "metrics.json").exists()


def test_frame_level_keeps_time_and_chunked_audio_matches(tiny_models, clips, tmp_path):
    root, names = clips
    models = {
        m: str(tiny_models / n)
        for m, n in zip(DIMS, ["tiny-clip", "tiny-hubert", "tiny-text"], strict=True)
    }
    common = dict(
        videos=root / "videos",
        transcripts=root / "transcription-merge.csv",
        models=models,
        level="frame",
        frames=3,
    )
    extract(ExtractOptions(out=tmp_path / "a", **common))
    vis = np.load(tmp_path / "a/features/tiny-clip-FRA" / f"{names[0]}.npy")
    assert vis.shape == (3, DIMS["visual"])
    aud = np.load(tmp_path / "a/features/tiny-hubert-FRA" / f"{names[13]}.npy")
    assert aud.shape[1] == DIMS["audio"] and 50 < aud.shape[0] < 100  # ~1.9 s at 50 frames/s
    txt = np.load(tmp_path / "a/features/tiny-text-FRA" / f"{names[4]}.npy")
    assert txt.shape == (5 + 2, DIMS["text"])  # 5 characters + [CLS] + [SEP]
    # Long audio in chunks: the same number of frames, only the chunk edges differ.
    extract(ExtractOptions(out=tmp_path / "b", audio_chunk_s=1.0, modalities=("audio",), **common))
    chunked = np.load(tmp_path / "b/features/tiny-hubert-FRA" / f"{names[13]}.npy")
    assert abs(chunked.shape[0] - aud.shape[0]) <= 1


def test_a_failing_clip_is_reported_the_rest_go_on_and_a_rerun_skips_done_work(
    tiny_models, tmp_path, capsys
):
    videos = tmp_path / "videos"
    videos.mkdir()
    for i in range(2):
        write_clip(videos / f"ok_{i}.mp4", seed=i)
    write_clip(videos / "silent.mp4", audio=False)
    (videos / "broken.mp4").write_bytes(b"not a video" * 10)
    faces = tmp_path / "faces"
    (faces / "ok_0" / "ok_0_aligned").mkdir(parents=True)
    for k in range(4):
        Image.new("RGB", (20, 20), (60 * k, 0, 0)).save(
            faces / "ok_0" / "ok_0_aligned" / f"{k}.bmp"
        )
    out = tmp_path / "out"
    args = ["extract", "--videos", str(videos), "--out", str(out), "--faces", str(faces)]
    args += ["--modalities", "visual,audio", *model_args(tiny_models)]
    code, stdout, stderr = run_cli(args, capsys)
    assert code == 1
    assert "3 extractions failed" in stderr and "Traceback" not in stderr
    assert "failed silent: no audio track" in stdout
    assert "failed broken: cannot open" in stdout
    assert "no face crops: whole frames used (2 clips)" in stdout  # ok_1 and silent
    visual = out / "features" / "tiny-clip-UTT"
    assert sorted(p.stem for p in visual.glob("*.npy")) == ["ok_0", "ok_1", "silent"]
    assert sorted(p.stem for p in (out / "features" / "tiny-hubert-UTT").glob("*.npy")) == [
        "ok_0",
        "ok_1",
    ]
    assert not list(out.rglob("*.tmp"))
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.npy")}

    code, stdout, _ = run_cli(args, capsys)
    assert code == 1
    assert "0 written, 3 already there, 1 failed" in stdout  # visual: only broken retried
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.npy")} == before


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--visual", "/nonexistent/model"], "--visual /nonexistent/model: cannot load"),
        (["--transcripts", "{t}", "--text-column", "english"], "no 'english' column"),
        (["--modalities", "visual,smell"], "--modalities"),
        (["--device", "cuda"], "no CUDA device"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(extra, message, tiny_models, tmp_path, capsys):
    if "--device" in extra and torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    videos = tmp_path / "videos"
    videos.mkdir()
    write_clip(videos / "a.mp4")
    transcripts = tmp_path / "t.csv"
    pd.DataFrame({"name": ["a"], "chinese": ["我"]}).to_csv(transcripts, index=False)
    out = tmp_path / "out"
    args = ["extract", "--videos", str(videos), "--out", str(out), *model_args(tiny_models)]
    args += ["--transcripts", str(transcripts)]
    code, _, stderr = run_cli([*args, *[e.format(t=transcripts) for e in extra]], capsys)
    assert code != 0
    assert message in stderr and len(stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_uniform_indices_spread_over_the_clip():
    assert uniform_indices(100, 4) == [12, 37, 62, 87]
    assert uniform_indices(3, 8) == [0, 1, 2]
