"""MER2025-SEMI (Track 1) release folders, read as they come: track1_train_disdim.csv
as the labels, track_all_candidates.csv as the test names; a MER2024 folder as before."""

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import FAST
from test_cli import run_cli

from mer_tune.data import synthetic
from mer_tune.data.layout import DataOptions, read_folders
from mer_tune.data.releases import find_layout
from mer_tune.errors import MerTuneError


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """A tiny synthetic folder in MER2025-SEMI's layout (truth file aside)."""
    return synthetic.write(tmp_path_factory.mktemp("r") / "mer2025", "tiny", 0, "MER2025-SEMI")


def _copy(release, tmp_path):
    import shutil

    return shutil.copytree(release, tmp_path / "copy")


def test_a_mer2025_release_reads_its_own_label_and_candidate_files(release, capsys):
    assert not (release / "label-disdim.csv").exists()
    assert "valence" in pd.read_csv(release / "track1_train_disdim.csv").columns
    data = read_folders(release)
    candidates = pd.read_csv(release / "track_all_candidates.csv")["name"]
    assert find_layout(release) == "MER2025-SEMI"
    assert sorted(data.names[data.split == "test"]) == sorted(candidates)
    assert (data.split == "labelled").sum() == 180
    code, out, _ = run_cli(["data", "check", str(release)], capsys)
    assert code == 0
    assert "layout: MER2025-SEMI (track1_train_disdim.csv, track_all_candidates.csv)" in out


def test_predict_writes_one_row_per_candidate(release, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "fast.yaml").write_text(yaml.safe_dump(FAST))
    out = tmp_path / "submission.csv"
    args = ["predict", "--config", "fast.yaml", "--data", str(release), "--folds", "2"]
    code, _, stderr = run_cli([*args, "--out", str(out)], capsys)
    assert code == 0, stderr
    sub = pd.read_csv(out)
    candidates = pd.read_csv(release / "track_all_candidates.csv")["name"]
    assert list(sub.columns) == ["name", "discrete"]
    assert len(sub) == len(candidates) and set(sub["name"]) == set(candidates)


@pytest.mark.parametrize(
    "breakage, message",
    [
        ("both_releases", "holds the label files of two releases \\(label-disdim.csv, "
         "track1_train_disdim.csv\\); keep one release's"),
        ("no_name_column", "track_all_candidates.csv: missing column 'name'"),
        ("names_no_sample", "track_all_candidates.csv: none of its 2 test names is a sample"),
        ("candidate_without_features", "track_all_candidates.csv: 1 of its candidates have no "
         "features in .* \\(e.g. 'sample_99999999'\\); extract them"),
        ("candidate_labelled", "track_all_candidates.csv: 1 of its test names are labelled "
         "samples \\('sample_"),
        ("pickled_only", "track1_label_6way.npz: holds pickled objects"),
    ],
)  # fmt: skip
def test_a_broken_mer2025_folder_is_one_line_naming_the_file(release, tmp_path, breakage, message):
    root = _copy(release, tmp_path)
    candidates = root / "track_all_candidates.csv"
    labels = pd.read_csv(root / "track1_train_disdim.csv")
    if breakage == "both_releases":
        labels.to_csv(root / "label-disdim.csv", index=False)
    elif breakage == "no_name_column":
        candidates.write_text("id\na\n")
    elif breakage == "names_no_sample":
        candidates.write_text("name\nnot_a_clip_1\nnot_a_clip_2\n")
    elif breakage == "candidate_without_features":
        names = pd.read_csv(candidates)["name"].tolist() + ["sample_99999999"]
        pd.DataFrame({"name": names}).to_csv(candidates, index=False)
    elif breakage == "candidate_labelled":
        names = pd.read_csv(candidates)["name"].tolist() + [labels["name"].iloc[0]]
        pd.DataFrame({"name": names}).to_csv(candidates, index=False)
    elif breakage == "pickled_only":
        (root / "track1_train_disdim.csv").unlink()
        corpus = {n: {"emo": e} for n, e in zip(labels["name"], labels["discrete"], strict=True)}
        np.savez(root / "track1_label_6way.npz", train_corpus=np.array(corpus, dtype=object))
    with pytest.raises(MerTuneError, match=message):
        read_folders(root)
    if breakage == "pickled_only":  # read with the explicit opt-in
        assert (read_folders(root, DataOptions(trust_pickle=True)).split == "labelled").sum() == 180


def test_synthetic_mer2025_is_built_in_that_layout(tmp_path, monkeypatch):
    """`--data synthetic:mer2025` writes (once) and reads a folder in MER2025's layout;
    shrunk here: the real one has 7,369 labelled and 20,000 candidates."""
    from mer_tune.data.resolve import resolve

    assert synthetic.SCALES["mer2025"].labelled == 7369
    assert synthetic.SCALES["mer2025"].test == 20000
    monkeypatch.setitem(synthetic.SCALES, "mer2025", synthetic.SCALES["tiny"])
    monkeypatch.setenv("MER_TUNE_HOME", str(tmp_path))
    data = resolve("synthetic:mer2025")
    folder = tmp_path / "synthetic" / f"mer2025-seed0-{synthetic.GENERATOR}"
    assert (folder / "track_all_candidates.csv").exists()
    assert not (folder / "label-disdim.csv").exists()
    assert (data.split == "test").sum() == 60
