import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import write_dataset

from mer_tune.data.layout import DEFAULT_FOLDERS, NO_CLASS, DataOptions, read_folders
from mer_tune.data.pack import load
from mer_tune.data.resolve import resolve
from mer_tune.errors import MerTuneError


def _feat(root, modality):
    return root / "features" / DEFAULT_FOLDERS[modality]


def test_reads_the_mertools_layout(tmp_path):
    root = write_dataset(tmp_path, n_lab=30, n_unl=10, dims=(4, 3, 5))
    data = read_folders(root)
    assert data.dims == {"audio": 4, "visual": 3, "text": 5}
    assert (data.split == "labelled").sum() == 30 and (data.split == "unlabelled").sum() == 10
    assert data.class_counts()["neutral"] == 5


def test_frame_level_features_are_mean_pooled(tmp_path):
    root = write_dataset(tmp_path, n_lab=12, n_unl=0)
    frames = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.save(_feat(root, "audio") / "sample_00000000.npy", frames)
    folder = _feat(root, "visual") / "sample_00000001"
    (_feat(root, "visual") / "sample_00000001.npy").unlink()
    folder.mkdir()
    for i in range(2):
        np.save(folder / f"{i:03d}.npy", np.full(3, float(i), np.float32))
    data = read_folders(root)
    assert np.allclose(data.features["audio"][0], frames.mean(0))
    assert np.allclose(data.features["visual"][1], 0.5)


@pytest.mark.parametrize(
    "breakage, message",
    [
        ("missing_folder", "feature folder for text not found"),
        ("missing_sample", "has no visual features"),
        ("dim_mismatch", "audio dim 7 differs from 4"),
        ("nan", "NaN or inf values in text features"),
        (
            "bad_label",
            "label 'bored' of sample 'sample_00000002' is not in the class list .*"
            "the label file has 7 classes: --set 'data.classes=\\[angry, bored, happy",
        ),
        ("empty_class", "no labelled sample of class 'surprise'"),
        ("npz_without_opt_in", "pickled objects"),
        ("duplicate_label", "sample 'sample_00000003' is listed more than once"),
        ("empty_npy", "sample_00000006.npy: empty or truncated .npy file"),
        ("lfs_pointer", "sample_00000001.npy: a Git LFS pointer, not the array .*git lfs pull"),
        ("not_npy", "sample_00000001.npy: not a .npy file"),
        ("frame_not_npy", "sample_00000001/000.npy: not a .npy file"),
        ("object_npy", "sample_00000001.npy: cannot read features .*allow_pickle=False"),
        ("empty_test_names", "test-names.csv: the test-name file is empty"),
        ("labels_folder", "is a folder; --labels names a label file"),
        ("string_npy", "sample_00000002.npy: features must be numbers, got dtype <U1"),
        ("zero_dim", "sample_00000000.npy: holds no feature values"),
        ("truth_header", "synthetic-truth.csv: missing column 'name'"),
        ("test_names_not_utf8", "names.txt: not a UTF-8 text file"),
        ("test_names_match_nothing", "names.txt: none of its 2 test names is a sample"),
        ("test_names_header_only", "names.csv: lists no test names"),
    ],
)
def test_bad_data_gives_one_clear_line(tmp_path, breakage, message):
    root = write_dataset(tmp_path, n_lab=30, n_unl=4, dims=(4, 3, 5))
    if breakage == "missing_folder":
        for f in _feat(root, "text").iterdir():
            f.unlink()
        _feat(root, "text").rmdir()
    elif breakage == "missing_sample":
        (_feat(root, "visual") / "sample_00000005.npy").unlink()
    elif breakage == "dim_mismatch":
        np.save(_feat(root, "audio") / "sample_00000003.npy", np.zeros(7, np.float32))
    elif breakage == "nan":
        np.save(_feat(root, "text") / "sample_00000004.npy", np.array([np.nan] * 5, np.float32))
    elif breakage == "bad_label":
        table = pd.read_csv(root / "label-disdim.csv")
        table.loc[2, "discrete"] = "bored"
        table.to_csv(root / "label-disdim.csv", index=False)
    elif breakage == "empty_class":
        table = pd.read_csv(root / "label-disdim.csv")
        table = table[table["discrete"] != "surprise"]
        table.to_csv(root / "label-disdim.csv", index=False)
    elif breakage == "npz_without_opt_in":
        (root / "label-disdim.csv").unlink()
        corpus = {"sample_00000000": {"emo": "happy"}}
        np.savez(root / "label-6way.npz", train_corpus=np.array(corpus, dtype=object))
    elif breakage == "duplicate_label":
        table = pd.read_csv(root / "label-disdim.csv")
        table = pd.concat([table, table.iloc[[3]].assign(discrete="sad")])
        table.to_csv(root / "label-disdim.csv", index=False)
    elif breakage == "empty_npy":
        (_feat(root, "audio") / "sample_00000006.npy").write_bytes(b"")
    elif breakage == "lfs_pointer":  # a clone without `git lfs pull`
        pointer = "version https://git-lfs.github.com/spec/v1\noid sha256:00ab\nsize 144\n"
        (_feat(root, "text") / "sample_00000001.npy").write_text(pointer)
    elif breakage == "not_npy":
        (_feat(root, "text") / "sample_00000001.npy").write_text("0.1,0.2,0.3,0.4,0.5\n")
    elif breakage == "frame_not_npy":
        (_feat(root, "text") / "sample_00000001.npy").unlink()
        (_feat(root, "text") / "sample_00000001").mkdir()
        (_feat(root, "text") / "sample_00000001" / "000.npy").write_text("0.1\n")
    elif breakage == "object_npy":  # real pickled data: never unpickled
        np.save(_feat(root, "text") / "sample_00000001.npy", np.array([{}] * 5, dtype=object))
    elif breakage == "empty_test_names":
        (root / "test-names.csv").write_bytes(b"")
    elif breakage == "string_npy":
        np.save(_feat(root, "visual") / "sample_00000002.npy", np.array(["a", "b", "c"]))
    elif breakage == "zero_dim":
        np.save(_feat(root, "audio") / "sample_00000000.npy", np.zeros(0, np.float32))
    elif breakage == "truth_header":
        (root / "synthetic-truth.csv").write_text("foo,bar\n1,2\n")
    elif breakage == "test_names_not_utf8":
        (tmp_path / "names.txt").write_bytes(b"\xff\xfe bad\n")
    elif breakage == "test_names_match_nothing":
        (tmp_path / "names.txt").write_text("other_0001\nother_0002\n")
    elif breakage == "test_names_header_only":
        (tmp_path / "names.csv").write_text("name\n")
    opts = DataOptions()
    if breakage == "labels_folder":
        opts = DataOptions(labels=str(root / "features"))
    elif breakage == "test_names_header_only":
        opts = DataOptions(test_names=str(tmp_path / "names.csv"))
    elif breakage.startswith("test_names_"):
        opts = DataOptions(test_names=str(tmp_path / "names.txt"))
    with pytest.raises(MerTuneError, match=message) as err:
        load(root, opts)
    assert "\n" not in str(err.value)


def test_npz_labels_read_with_the_opt_in(tmp_path):
    root = write_dataset(tmp_path, n_lab=6, n_unl=0)
    (root / "label-disdim.csv").unlink()
    classes = ["neutral", "angry", "happy", "sad", "worried", "surprise"]
    corpus = {f"sample_{i:08d}": {"emo": classes[i]} for i in range(6)}
    np.savez(root / "label-6way.npz", train_corpus=np.array(corpus, dtype=object))
    data = read_folders(root, DataOptions(trust_pickle=True))
    assert data.labels.tolist() == list(range(6))


def test_test_names_are_kept_apart(tmp_path):
    root = write_dataset(tmp_path, n_lab=30, n_unl=6)
    # A name that is not a sample here is ignored: the list may cover more than this data.
    pd.DataFrame({"name": ["sample_00000031", "sample_00000032", "other_0001"]}).to_csv(
        root / "test-names.csv", index=False
    )
    data = read_folders(root)
    assert (data.split == "test").sum() == 2 and (data.split == "unlabelled").sum() == 4


def test_only_synthetic_or_synthetic_colon_means_the_built_in_data(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_dataset(tmp_path / "synthetic-mine")
    assert resolve("synthetic-mine").source == "synthetic-mine"
    with pytest.raises(MerTuneError, match="--data synthetic-2024: no such folder"):
        resolve("synthetic-2024")
    with pytest.raises(MerTuneError, match="synthetic:tiny:-1: the seed must be a non-negative"):
        resolve("synthetic:tiny:-1")


def test_pack_is_memory_mapped_reused_and_rebuilt_on_change(tmp_path):
    root = write_dataset(tmp_path / "d", n_lab=30, n_unl=4)
    first = load(root)
    assert isinstance(first.features["audio"], np.memmap)
    assert first.features["audio"].dtype == np.float16
    again = load(root)
    assert again.fingerprint == first.fingerprint
    np.save(_feat(root, "audio") / "sample_00000099.npy", np.zeros(4, np.float32))
    np.save(_feat(root, "visual") / "sample_00000099.npy", np.zeros(3, np.float32))
    np.save(_feat(root, "text") / "sample_00000099.npy", np.zeros(5, np.float32))
    rebuilt = load(root)
    assert len(rebuilt.names) == len(first.names) + 1
    assert rebuilt.fingerprint != first.fingerprint


def test_synthetic_dataset_has_mer_shape(tiny_dir):
    data = load(tiny_dir)
    counts = data.class_counts()
    assert list(counts) == ["neutral", "angry", "happy", "sad", "worried", "surprise"]
    assert counts["neutral"] > counts["surprise"] > 0
    assert data.hidden_labels is not None
    pool = data.split != "labelled"
    truth = data.hidden_labels[pool]
    assert set(np.unique(truth)) <= {NO_CLASS, 0, 1, 2, 3, 4, 5}
    assert (data.labels[pool] == -1).all()
    # Mostly clips of no one class (mixtures, other emotions, little signal), as MER2024's
    # pool; the test names: the scale's scored clean clips among clips of no class.
    assert (truth == NO_CLASS).mean() > 0.5
    test_truth = data.hidden_labels[data.split == "test"]
    assert ((test_truth >= 0).sum(), (test_truth == NO_CLASS).sum()) == (40, 20)


def test_in_memory_synthetic_data_matches_the_written_folder(tmp_path):
    from mer_tune.data import synthetic as synth

    written = read_folders(synth.write(tmp_path / "d", "tiny", 5))
    built = synth.in_memory("tiny", 5)
    row = {name: i for i, name in enumerate(written.names)}
    order = [row[name] for name in built.names]
    assert sorted(built.names) == sorted(written.names)
    for field in ("split", "labels", "hidden_labels"):
        assert (getattr(written, field)[order] == getattr(built, field)).all(), field
    for m in built.features:
        assert np.array_equal(written.features[m][order], built.features[m])


def test_trials_read_one_shared_copy_of_the_packed_features(tiny_dir, ray_session):
    import ray

    packed = load(tiny_dir)
    assert all(isinstance(a, np.memmap) for a in packed.features.values())
    shared = packed.shareable()
    for m, arr in shared.features.items():
        assert type(arr) is np.ndarray and np.shares_memory(arr, packed.features[m])
    # What Ray does with the dataset of a search: put it once, get it in each trial.
    # Zero-copy reads come back read-only, views of the object store.
    got = ray.get(ray.put(shared))
    for m, arr in got.features.items():
        assert not arr.flags.writeable and np.array_equal(arr, packed.features[m])
    # A memory map itself would be pickled in-band: a private, writable copy per trial.
    assert all(a.flags.writeable for a in ray.get(ray.put(packed)).features.values())


def test_packing_on_a_full_disk_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    import collections
    import errno

    from mer_tune.data import pack as data_module

    root = write_dataset(tmp_path / "d", n_lab=30, n_unl=4)
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(data_module.shutil, "disk_usage", lambda p: usage(10, 10, 1000))
    with pytest.raises(MerTuneError, match=r"packing needs 0\.06 GiB free, 0\.00 GiB are"):
        load(root)
    monkeypatch.undo()

    def no_space(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(data_module.os, "posix_fallocate", no_space)
    with pytest.raises(MerTuneError, match="cannot reserve .*No space left on device"):
        load(root)
    assert not (root / ".mer-tune-pack").exists()  # no .packing- folder, no lock left


def test_two_processes_packing_one_folder_pack_it_once(tmp_path):
    import subprocess
    import sys

    root = write_dataset(tmp_path / "d", n_lab=60, n_unl=200)
    code = (
        "import sys; from mer_tune.data import pack; "
        "calls = []; real = pack.read_folders; "
        "pack.read_folders = lambda *a, **k: calls.append(1) or real(*a, **k); "
        "d = pack.load(sys.argv[1]); print(len(calls), d.fingerprint)"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(root)], stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=120)[0].split() for p in procs]
    assert sorted(o[0] for o in outs) == ["0", "1"]  # one packed, the other waited and mapped
    assert outs[0][1] == outs[1][1]


def test_a_dataset_that_does_not_read_leaves_no_pack_folder(tmp_path):
    root = write_dataset(tmp_path / "d", n_lab=30, n_unl=4)
    (root / "label-disdim.csv").write_text("name,discrete\nsample_00000000,bored\n")
    with pytest.raises(MerTuneError, match="not in the class list"):
        load(root)
    assert not (root / ".mer-tune-pack").exists()


def test_a_modality_float16_would_blur_is_packed_as_float32_and_data_check_says_so(tmp_path):
    from mer_tune.data.checks import check_report

    root = write_dataset(tmp_path / "d", n_lab=30, n_unl=4)
    # Text features with a large mean and a small spread: float16 steps at 1000 are 0.5,
    # fifty of the dimension's standard deviations.
    rng = np.random.default_rng(0)
    for path in _feat(root, "text").glob("*.npy"):
        np.save(path, (1000 + 0.01 * rng.normal(size=5)).astype(np.float32))
    data = load(root)
    assert data.features["text"].dtype == np.float32
    assert data.features["audio"].dtype == np.float16
    stored = np.asarray(data.features["text"])
    assert np.abs(stored - 1000).max() < 0.1 and stored.std(axis=0).min() > 0.005
    report, ok = check_report(root, DataOptions())
    assert ok and "note: text features are stored as float32" in report
    assert "audio features" not in report


def _npy_claiming(path, shape, dtype="<f4") -> None:
    """A .npy file whose header claims `shape` but holds 16 bytes of data."""
    header = f"{{'descr': '{dtype}', 'fortran_order': False, 'shape': {shape}, }}"
    header = header + " " * (63 - (10 + len(header)) % 64) + "\n"
    body = b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode()
    path.write_bytes(body + b"\x00" * 16)


@pytest.mark.parametrize("which", ["sample_00000000", "sample_00000009"])
def test_a_feature_header_claiming_gigabytes_is_refused_before_its_data_is_read(tmp_path, which):
    root = write_dataset(tmp_path, n_lab=30, n_unl=4, dims=(4, 3, 5))
    _npy_claiming(_feat(root, "audio") / f"{which}.npy", (1342177280,))  # 5 GiB of float32
    with pytest.raises(MerTuneError, match=f"{which}.npy: its header claims a 1342177280 float32"):
        read_folders(root)


def test_a_later_sample_of_another_dimension_is_refused_from_its_header(tmp_path, monkeypatch):
    root = write_dataset(tmp_path, n_lab=30, n_unl=4, dims=(4, 3, 5))
    np.save(_feat(root, "audio") / "sample_00000009.npy", np.zeros(7, np.float32))
    loaded = []
    real = np.load
    monkeypatch.setattr(np, "load", lambda f, **k: loaded.append(str(f.name)) or real(f, **k))
    with pytest.raises(MerTuneError, match="sample_00000009.npy: audio dim 7 differs from 4"):
        read_folders(root)
    assert loaded and not any("sample_00000009" in name for name in loaded)


def test_a_feature_link_that_loops_is_one_line(tmp_path):
    root = write_dataset(tmp_path, n_lab=30, n_unl=4, dims=(4, 3, 5))
    loop = _feat(root, "visual") / "sample_00000099.npy"
    loop.symlink_to(loop)
    with pytest.raises(MerTuneError, match="sample_00000099.npy: cannot read \\(Too many levels"):
        read_folders(root)


def test_test_names_that_are_labelled_samples_are_refused_naming_some(tmp_path):
    root = write_dataset(tmp_path, n_lab=30, n_unl=4, dims=(4, 3, 5))
    names = ["sample_00000001", "sample_00000002", "sample_00000031"]
    (root / "test-names.csv").write_text("name\n" + "\n".join(names) + "\n")
    with pytest.raises(
        MerTuneError,
        match="test-names.csv: 2 of its test names are labelled samples "
        "\\('sample_00000001', 'sample_00000002'\\)",
    ):
        read_folders(root)


def test_labels_are_read_trimmed_and_an_empty_one_is_named(tmp_path):
    root = write_dataset(tmp_path, n_lab=30, n_unl=4, dims=(4, 3, 5))
    table = pd.read_csv(root / "label-disdim.csv")
    table["discrete"] = table["discrete"] + " "  # a spreadsheet's trailing spaces
    table.to_csv(root / "label-disdim.csv", index=False)
    assert read_folders(root).class_counts()["neutral"] == 5
    table.loc[4, "discrete"] = "  "
    table.to_csv(root / "label-disdim.csv", index=False)
    with pytest.raises(MerTuneError, match="sample 'sample_00000004' has an empty label"):
        read_folders(root)


def test_a_class_list_hint_quotes_names_that_yaml_would_misread(tmp_path):
    from mer_tune.method.config import parse_set_options

    root = write_dataset(tmp_path, n_lab=30, n_unl=4, dims=(4, 3, 5))
    table = pd.read_csv(root / "label-disdim.csv")
    table.loc[2, "discrete"] = "very sad: 2"
    table.to_csv(root / "label-disdim.csv", index=False)
    with pytest.raises(MerTuneError) as err:
        read_folders(root)
    hint = str(err.value).split("--set '")[1].split("' reads them all")[0]
    assert "very sad: 2" in parse_set_options([hint])["data.classes"]


def test_a_damaged_pack_is_rebuilt_with_a_note_and_a_file_in_its_place_is_one_line(
    tmp_path, capsys
):
    root = write_dataset(tmp_path / "d", n_lab=30, n_unl=4, dims=(4, 3, 5))
    expected = np.array(load(root).features["audio"])  # a copy: the pack is a memory map
    packed = next(p for p in (root / ".mer-tune-pack").iterdir() if p.is_dir()) / "audio.npy"
    packed.write_bytes(packed.read_bytes()[:-40])  # truncated, its meta.json intact
    from mer_tune.data.checks import check_report

    report, ok = check_report(root, DataOptions())
    assert ok and "packed copy" in report and "is damaged (audio.npy: its header claims" in report
    again = load(root)
    assert "audio.npy: its header claims" in capsys.readouterr().err
    assert np.array_equal(np.asarray(again.features["audio"]), expected)
    other = write_dataset(tmp_path / "e", n_lab=30, n_unl=4, dims=(4, 3, 5))
    (other / ".mer-tune-pack").write_text("not a folder")
    with pytest.raises(MerTuneError, match=r"\.mer-tune-pack: is a file; mer-tune keeps"):
        load(other)


def _class_signal(features: np.ndarray, labels: np.ndarray) -> float:
    """Between-class share of the features' variance (0: no class signal)."""
    means = np.stack([features[labels == c].mean(0) for c in np.unique(labels)])
    counts = np.bincount(labels)[np.unique(labels)]
    between = (counts[:, None] * (means - features.mean(0)) ** 2).sum() / len(labels)
    return float(between / features.var(0).sum())


def test_a_preset_builds_the_scale_with_its_changes(tmp_path):
    """synthetic:tiny+misleading-audio: the audio of half the clips expresses another
    class; the same samples, labels and test names, under a name of its own."""
    from mer_tune.data import synthetic as synth

    plain, misled = synth.in_memory("tiny", 3), synth.in_memory("tiny+misleading-audio", 3)
    assert (plain.names == misled.names).all() and (plain.labels == misled.labels).all()
    assert plain.fingerprint != misled.fingerprint
    lab = plain.labels >= 0

    def audio_signal(d):
        return _class_signal(d.features["audio"][lab].astype(float), d.labels[lab])

    assert audio_signal(misled) < 0.75 * audio_signal(plain)
    folder = resolve("synthetic:tiny+misleading-audio:3")
    assert folder.fingerprint != resolve("synthetic:tiny:3").fingerprint
    home = Path(os.environ["MER_TUNE_HOME"])
    assert (home / "synthetic" / f"tiny+misleading-audio-seed3-{synth.GENERATOR}").is_dir()
