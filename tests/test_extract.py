"""`mer-tune extract` with tiny randomly initialised CLIP, HuBERT and BERT models saved to a
temp folder, on tiny generated clips with sound."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import FAST
from PIL import Image
from test_cli import run_cli

from mer_tune.data.extract import ExtractOptions, extract
from mer_tune.data.media import uniform_indices
from mer_tune.data.synthetic_media import TINY_DIMS, write_clip, write_models, write_transcripts

CLASSES = ["neutral", "angry", "happy", "sad", "worried", "surprise"]
DIMS = TINY_DIMS


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    return write_models(tmp_path_factory.mktemp("models"), "tiny")


def model_args(models: dict) -> list[str]:
    return [f"--{m}={folder}" for m, folder in models.items()]


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
    code, _, err = run_cli(run_args, capsys)  # 2 per class: too few for inner selection
    assert code == 1 and "class 'neutral' has 2 labelled samples" in err
    code, stdout, _ = run_cli([*run_args, "--set", "eval.select_on=scored"], capsys)
    assert code == 0, stdout
    assert (run_out / "metrics.json").exists()


def test_frame_level_keeps_time_and_long_audio_goes_in_chunks(tiny_models, clips, tmp_path):
    root, names = clips
    models = {m: str(folder) for m, folder in tiny_models.items()}
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
    # 0.5 s chunks: three pieces (the short tail joins the last), each losing under one
    # frame at its edge to the convolutional front end.
    extract(ExtractOptions(out=tmp_path / "b", audio_chunk_s=0.5, modalities=("audio",), **common))
    chunked = np.load(tmp_path / "b/features/tiny-hubert-FRA" / f"{names[13]}.npy")
    assert aud.shape[0] - 3 <= chunked.shape[0] < aud.shape[0]


def test_features_do_not_depend_on_the_batch_size(tiny_models, clips, tmp_path):
    root, names = clips
    common = dict(
        videos=root / "videos",
        transcripts=root / "transcription-merge.csv",
        models={m: str(folder) for m, folder in tiny_models.items()},
        modalities=("visual", "text"),
        frames=3,
    )
    extract(ExtractOptions(out=tmp_path / "one", batch_size=1, **common))
    extract(ExtractOptions(out=tmp_path / "many", batch_size=7, **common))
    for folder in ("tiny-clip-UTT", "tiny-text-UTT"):
        for name in names:
            one = np.load(tmp_path / "one/features" / folder / f"{name}.npy")
            many = np.load(tmp_path / "many/features" / folder / f"{name}.npy")
            np.testing.assert_allclose(one, many, rtol=1e-4, atol=1e-5)


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
    # silent has no audio: it is written in no modality, so the folder stays a dataset.
    assert sorted(p.stem for p in visual.glob("*.npy")) == ["ok_0", "ok_1"]
    assert "removed 1 clips that failed in another modality (silent)" in stdout
    whole = tmp_path / "whole"
    extract(
        ExtractOptions(
            videos=videos,
            out=whole,
            models={"visual": tiny_models["visual"]},
            modalities=("visual",),
        )
    )
    # ok_0 was read from its face crops, ok_1 from whole frames as in a run without faces.
    crops, frames = (np.load(visual / f"{n}.npy") for n in ("ok_0", "ok_1"))
    assert (whole / "features/tiny-clip-UTT/silent.npy").exists()  # visual alone: kept
    assert not np.allclose(crops, np.load(whole / "features/tiny-clip-UTT/ok_0.npy"))
    assert np.allclose(frames, np.load(whole / "features/tiny-clip-UTT/ok_1.npy"))
    assert sorted(p.stem for p in (out / "features" / "tiny-hubert-UTT").glob("*.npy")) == [
        "ok_0",
        "ok_1",
    ]
    assert not list(out.rglob("*.tmp"))
    (out / "features/tiny-hubert-UTT/ok_1.npy").write_bytes(b"")  # cut short by a crash
    (out / "features/tiny-hubert-UTT/.ok_1.npy.123.tmp").write_bytes(b"partial")
    code, stdout, _ = run_cli(args, capsys)
    assert "1 written, 1 already there, 2 failed" in stdout  # audio: ok_1 redone
    assert not list(out.rglob("*.tmp"))
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.npy")}

    code, stdout, _ = run_cli(args, capsys)
    assert code == 1
    # visual: the incomplete clips are retried (silent written, then removed again)
    assert "1 written, 2 already there, 1 failed" in stdout
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.npy")} == before


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--visual", "/nonexistent/model"], "--visual /nonexistent/model: cannot load"),
        (["--transcripts", "{t}", "--text-column", "english"], "no 'english' column"),
        (["--modalities", "visual,smell"], "--modalities"),
        (["--transcripts", "{bad}"], "no name matches a clip"),
        (["--audio", "/nonexistent/hubert"], "--audio /nonexistent/hubert: cannot load"),
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
    pd.DataFrame({"name": ["a.mp4"], "chinese": ["我"]}).to_csv(tmp_path / "bad.csv", index=False)
    out = tmp_path / "out"
    args = ["extract", "--videos", str(videos), "--out", str(out), *model_args(tiny_models)]
    args += ["--transcripts", str(transcripts)]
    code, _, stderr = run_cli(
        [*args, *[e.format(t=transcripts, bad=tmp_path / "bad.csv") for e in extra]], capsys
    )
    assert code != 0
    assert message in stderr and len(stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_a_refusal_before_any_clip_prints_no_progress_bar(tmp_path):
    """The bar starts with the first modality's clips: a refusal before it is the error
    line alone (the bar used to leave an empty line on stdout before it)."""
    (tmp_path / "videos").mkdir()
    write_clip(tmp_path / "videos" / "a.mp4")
    args = ["extract", "--videos", str(tmp_path / "videos"), "--out", str(tmp_path / "o")]
    done = subprocess.run(
        [sys.executable, "-m", "mer_tune", *args], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr == (
        "error: text features need --transcripts (or leave text out with --modalities)\n"
    )


def test_uniform_indices_spread_over_the_clip():
    assert uniform_indices(100, 4) == [12, 37, 62, 87]
    assert uniform_indices(3, 8) == [0, 1, 2]


def test_each_modality_has_its_own_trust_flag_and_revision_on_every_load(
    tiny_models, clips, tmp_path, capsys, monkeypatch
):
    import transformers

    from mer_tune.data import extractors

    calls = []
    real = extractors.load_model

    def spy(option, spec, loader, opts, **kwargs):
        model = real(option, spec, loader, opts, **kwargs)
        calls.append((option, loader.__name__, opts.trust_remote_code, dict(opts.revisions)))
        return model

    monkeypatch.setattr(extractors, "load_model", spy)
    seen = []
    real_fp = transformers.AutoConfig.from_pretrained

    def record(spec, **kwargs):
        seen.append(kwargs)
        return real_fp(spec, **kwargs)

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", record)
    root, _ = clips
    args = ["extract", "--videos", str(root / "videos"), "--out", str(tmp_path / "o")]
    args += [*model_args(tiny_models), "--transcripts", str(root / "transcription-merge.csv")]
    code, _, err = run_cli([*args, "--trust-text-code"], capsys)
    assert code == 0, err
    loaders = {(o, name) for o, name, _, _ in calls}
    assert {("visual", "AutoModel"), ("audio", "AutoModel"), ("text", "AutoModel")} <= loaders
    assert {("visual", "AutoImageProcessor"), ("audio", "AutoFeatureExtractor")} <= loaders
    assert {("text", "AutoTokenizer")} <= loaders
    assert all(trusted == ("text",) for _, _, trusted, _ in calls)
    # every load says trust_remote_code explicitly (no hidden y/N question), per modality
    assert [k["trust_remote_code"] for k in seen[:3]] == [False, False, True]  # up-front checks
    assert all("trust_remote_code" in k for k in seen)
