import json

import pandas as pd
import pytest
import yaml
from conftest import FAST, write_dataset
from sklearn.metrics import f1_score

from mer_tune.cli import main


def run_cli(args, capsys, cwd=None):
    """Run the CLI in-process (in `cwd` if given); return (exit code, stdout, stderr)."""
    import os

    before = os.getcwd()
    try:
        if cwd:
            os.chdir(cwd)
        main(args)
        code = 0
    except SystemExit as exc:
        code = exc.code or 0
    finally:
        os.chdir(before)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_run_writes_results_that_reproduce_the_printed_score(tiny_dir, tmp_path, capsys):
    cfg_file = tmp_path / "fast.yaml"
    cfg_file.write_text(yaml.safe_dump(FAST))
    out = tmp_path / "out"
    code, stdout, _ = run_cli(
        ["run", "--data", str(tiny_dir), "--config", str(cfg_file), "--out", str(out)], capsys
    )
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    preds = pd.read_csv(out / "val_predictions.csv")
    per_fold = [
        f1_score(g["label"], g["pred"], average="weighted") for _, g in preds.groupby("fold")
    ]
    assert metrics["weighted_f1"] == pytest.approx(sum(per_fold) / len(per_fold))
    assert f"{metrics['weighted_f1']:.4f}" in stdout
    assert {"per_class_f1", "pseudo_labels_added", "seconds_per_stage"} <= set(metrics)
    # The resolved config is loadable again and gives the same score.
    out2 = tmp_path / "out2"
    run_cli(
        ["run", "--data", str(tiny_dir), "--config", str(out / "config.yaml"), "--out", str(out2)],
        capsys,
    )
    assert json.loads((out2 / "metrics.json").read_text())["weighted_f1"] == metrics["weighted_f1"]


@pytest.mark.parametrize(
    "args, code, message",
    [
        (
            ["run", "--set", "optim.lrr=1"],
            2,
            "unknown config key 'optim.lrr'; valid keys: optim.lr",
        ),
        (["run", "--data", "/nonexistent/x"], 2, "no such folder"),
        (["run", "--data", "synthetic:huge"], 2, "unknown scale 'huge'"),
        (["run", "--set", "self_training.thresholds.sad=2"], 2, "outside (0, 1]"),
        (["run", "--set", "voting.weights.fusion=.inf"], 2, "should be a finite number"),
        (
            ["run", "--data", "synthetic:tiny+loud"],
            2,
            "--data synthetic:tiny+loud: unknown synthetic preset 'loud' in 'tiny+loud'; "
            "valid: misleading-audio",
        ),
    ],
)
def test_bad_input_is_one_line_without_traceback(args, code, message, capsys, tmp_path):
    got, stdout, stderr = run_cli(args + ["--out", str(tmp_path / "o")], capsys)
    assert got == code
    assert message in stderr
    assert len(stderr.strip().splitlines()) == 1 and "Traceback" not in stderr


@pytest.mark.parametrize(
    "args", [["search", "--seed", "-1"], ["data", "synth", "--out", "d", "--seed", "-1"]]
)
def test_a_negative_seed_is_one_line(args, capsys, tmp_path):
    code, _, stderr = run_cli(args, capsys, cwd=tmp_path)
    assert code == 2 and "'--seed': -1 is not in the range" in stderr
    assert len(stderr.strip().splitlines()) == 1 and not (tmp_path / "d").exists()


def test_search_storage_uri_is_refused_before_anything_starts(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, stderr = run_cli(["search", "--storage", "s3://bucket/runs"], capsys)
    assert code == 2 and "--storage s3://bucket/runs: URIs are not supported" in stderr
    assert list(tmp_path.iterdir()) == []


def test_bad_data_exits_1_and_writes_nothing(tmp_path, capsys):
    root = write_dataset(tmp_path / "d", n_lab=30, n_unl=4)
    (root / "features" / "Baichuan2-13B-Base-UTT" / "sample_00000001.npy").unlink()
    out = tmp_path / "out"
    code, _, stderr = run_cli(["run", "--data", str(root), "--out", str(out)], capsys)
    assert code == 1 and "has no text features" in stderr
    assert not out.exists()  # not even an empty folder


def test_a_failed_search_leaves_no_storage_folder_it_made(tmp_path, capsys):
    root = write_dataset(tmp_path / "d", n_lab=30, n_unl=4)
    (root / "features" / "Baichuan2-13B-Base-UTT" / "sample_00000001.npy").unlink()
    kept = tmp_path / "kept"
    kept.mkdir()
    for storage in (tmp_path / "runs" / "mine", kept):
        args = ["search", "--data", str(root), "--storage", str(storage), "--trials", "1"]
        code, _, stderr = run_cli(args, capsys)
        assert code == 1 and "has no text features" in stderr
    assert not (tmp_path / "runs").exists()  # made by the search, left empty: removed
    assert kept.is_dir()  # there before the search: never touched


def test_a_diverging_config_is_one_line_and_writes_nothing(tiny_dir, tmp_path, capsys):
    out = tmp_path / "runs" / "out"  # neither folder exists before
    code, _, stderr = run_cli(
        ["run", "--data", str(tiny_dir), "--set", "optim.lr=1e9", "--out", str(out)], capsys
    )
    assert code == 1 and "pretrain: the loss became nan in epoch 0" in stderr
    # The progress line of the stage comes before it; the error is one line of its own.
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "optim.lr" in errors[0] and "Traceback" not in stderr
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    "args, option",
    [
        (["run", "--out", ""], "--out"),  # wrote its files into the current folder
        (["predict", "--out", " "], "--out"),  # trained, then failed with a traceback
        (["data", "synth", "--out", ""], "--out"),
        (["search", "--storage", ""], "--storage"),
        (["search", "--experiment", ""], "--experiment"),  # failed after Ray started
        (["search", "--cache-dir", ""], "--cache-dir"),
        (["search", "--tracking-uri", ""], "--tracking-uri"),
        (["report", "s", "--storage", ""], "--storage"),
    ],
)
def test_an_empty_path_or_name_is_refused(tmp_path, capsys, monkeypatch, args, option):
    monkeypatch.chdir(tmp_path)
    code, _, stderr = run_cli(args, capsys)
    assert code == 2 and stderr.startswith(f"error: Invalid value for '{option}': ")
    assert len(stderr.strip().splitlines()) == 1 and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", ["run", "predict"])
def test_device_cuda_without_a_card_is_one_line(tmp_path, capsys, monkeypatch, command):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # as on a CPU machine
    monkeypatch.chdir(tmp_path)  # where predict's default MLflow store would go
    out = tmp_path / ("o" if command == "run" else "o.csv")
    args = [command, "--data", "synthetic:tiny", "--device", "cuda", "--out", str(out)]
    code, _, stderr = run_cli(args, capsys)
    assert code == 1 and stderr == "error: --device cuda: no CUDA device is visible\n"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("option", ["--holdout-seed", "--confirm-top", "--confirm-seeds"])
def test_a_confirm_option_without_a_holdout_is_refused(tmp_path, capsys, monkeypatch, option):
    monkeypatch.chdir(tmp_path)
    code, _, stderr = run_cli(["search", "--holdout", "0", option, "2"], capsys)
    assert code == 2 and stderr == (
        f"error: {option} with --holdout 0: there is no holdout to use\n"
    )
    assert list(tmp_path.iterdir()) == []


def test_data_synth_where_a_folder_cannot_be_made_is_one_line(tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    code, _, stderr = run_cli(["data", "synth", "--out", str(tmp_path / "afile" / "x")], capsys)
    assert code == 1 and stderr.startswith(f"error: {tmp_path / 'afile' / 'x'}: cannot create")
    assert len(stderr.strip().splitlines()) == 1


def test_data_synth_and_check(tmp_path, capsys):
    code, stdout, _ = run_cli(
        ["data", "synth", "--out", str(tmp_path / "s"), "--scale", "tiny"], capsys
    )
    assert code == 0
    code, stdout, _ = run_cli(["data", "check", str(tmp_path / "s")], capsys)
    assert code == 0
    assert "labelled per class: neutral" in stdout and "no problems found" in stdout
    assert "dims: audio 24" in stdout


def test_data_check_reports_a_problem(tmp_path, capsys):
    root = write_dataset(tmp_path / "d", n_lab=30, n_unl=4)
    (root / "features" / "chinese-hubert-large-UTT" / "sample_00000002.npy").unlink()
    code, stdout, _ = run_cli(["data", "check", str(root)], capsys)
    assert code == 1 and "problem: sample 'sample_00000002' has no audio features" in stdout


def test_data_check_follows_its_hint_for_another_class_list(tmp_path, capsys):
    classes = ["neutral", "angry", "happy", "sad", "worried", "surprise", "bored"]
    root = write_dataset(tmp_path / "d", n_lab=28, n_unl=4, classes=classes)
    code, stdout, _ = run_cli(["data", "check", str(root)], capsys)
    hint = stdout.split("the label file has 7 classes: ")[1].split(" reads them all")[0]
    assert code == 1 and hint.startswith("--set 'data.classes=[")
    # The hint is an option of the command that gave it: followed, the check passes.
    code, stdout, _ = run_cli(["data", "check", str(root), "--set", hint[7:-1]], capsys)
    assert code == 0 and "labelled per class: angry" in stdout and "bored 4" in stdout


def test_predict_writes_a_submission_for_every_test_name(tiny_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg_file = tmp_path / "fast.yaml"
    cfg_file.write_text(yaml.safe_dump(FAST))
    out = tmp_path / "submission.csv"
    code, stdout, stderr = run_cli(
        [
            "predict",
            "--config",
            str(cfg_file),
            "--data",
            str(tiny_dir),
            "--folds",
            "2",
            "--out",
            str(out),
        ],
        capsys,
    )
    assert code == 0, stderr
    sub = pd.read_csv(out)
    test_names = pd.read_csv(tiny_dir / "test-names.csv")["name"]
    assert list(sub.columns) == ["name", "discrete"]
    assert sorted(sub["name"]) == sorted(test_names) and sub["name"].is_unique
    assert set(sub["discrete"]) <= {"neutral", "angry", "happy", "sad", "worried", "surprise"}
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("mer-tune").experiment_id])
    assert [r.data.tags["mer_tune.kind"] for r in runs] == ["predict"]
    assert {a.path for a in client.list_artifacts(runs[0].info.run_id)} >= {
        "submission.csv",
        "config.yaml",
    }


def test_predict_without_test_names_is_a_clear_error(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = write_dataset(tmp_path / "d", n_lab=30, n_unl=4)
    code, _, stderr = run_cli(
        ["predict", "--data", str(root), "--out", str(tmp_path / "s.csv")], capsys
    )
    assert code == 1 and "no test names" in stderr and not (tmp_path / "s.csv").exists()


def test_the_search_summary_fits_80_columns():
    import io

    import numpy as np
    from rich.console import Console

    from mer_tune.printing import top_trials_table

    rng = np.random.default_rng(0)
    params = [f"self_training.thresholds.{c}" for c in ("neutral", "angry", "happy", "sad",
                                                        "worried", "surprise")]  # fmt: skip
    results = pd.DataFrame({"trial": range(12), "trial_id": [f"{i:08x}" for i in range(12)]})
    for p in params:
        results[p] = rng.uniform(0.5, 1.0, 12)
    results["optim.batch_size"] = 256  # the same in every trial: not shown
    results["status"] = ["FINISHED"] * 11 + ["FAILED"]
    results["seconds"] = rng.uniform(10, 200, 12)
    results["weighted_f1"] = rng.uniform(0.6, 0.9, 12)
    out = io.StringIO()
    Console(file=out, width=80, color_system=None).print(top_trials_table(results, 80))
    lines = out.getvalue().splitlines()
    assert max(len(line) for line in lines) <= 80
    rows = [line for line in lines if line.strip()[:2].strip().isdigit()]
    assert len(rows) == 10  # one line per trial: no cell wrapped
    assert "batch_size" not in out.getvalue() and "FINISHED" in out.getvalue()
    assert "more parameters in results.csv" in out.getvalue()


def test_the_confirm_lines_fit_80_columns(capsys):
    from mer_tune.printing import print_confirm

    row = dict(trial=12, search="s", inner_f1=0.78912, holdout_f1=0.79, holdout_low=0.7321,
               holdout_high=0.8461, optimism_gap=-0.0011, gain_vs_baseline=0.0451,
               gain_low=-0.0151, gain_high=0.0803, retrained_f1=0.8229, retrained_sd=0.0091,
               truth_f1=0.8006, winner=True, adopted=True)  # fmt: skip
    table = pd.DataFrame([row, row | {"role": "baseline", "trial": 0}])
    table.loc[0, "role"] = "candidate"
    print_confirm(table, 201)
    lines = capsys.readouterr().out.splitlines()
    assert max(len(line) for line in lines) <= 80, lines
    assert "  trial 0 (baseline, adopted)" in lines


@pytest.mark.parametrize("args", [["--help"], ["spaces"], ["config", "--help"]])
def test_commands_that_train_nothing_start_without_torch(args):
    """Help, the space list and the config reference answer at once: they import neither
    PyTorch nor scikit-learn (about 2 s of imports on a laptop core)."""
    import subprocess
    import sys

    probe = (
        "import sys\nfrom mer_tune.cli import main\ntry:\n    main(sys.argv[1:])\n"
        "except SystemExit as exc:\n    assert not exc.code, exc.code\n"
        "print(sorted({'torch', 'sklearn'} & set(sys.modules)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe, *args], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[-1] == "[]"


def test_the_progress_line_counts_a_retried_trial_once(capsys):
    """Under --max-failures Tune starts a failed trial again without ending it first."""
    from mer_tune.printing import SearchProgress

    progress = SearchProgress(2)
    first, second = {"trial": 0, "trial_id": "a"}, {"trial": 1, "trial_id": "b"}
    for row in (first, second, first):  # trial 0 fails once and is retried
        progress("start", row=row)
    progress("complete", row=first | {"status": "FINISHED", "weighted_f1": 0.5})
    progress("error", row=second | {"status": "FAILED", "error": "boom"})
    lines = capsys.readouterr().err.splitlines()
    assert "done 1/2, running 1, failed 0, best 0.5000" in lines[0]
    assert "done 1/2, running 0, failed 1, best 0.5000" in lines[1]


def test_the_progress_line_after_a_resume_counts_the_searchs_own_trials(capsys):
    """--resume keeps the search's settings: its progress counts its own --trials (not
    the option's default) and the trials it kept."""
    from mer_tune.printing import SearchProgress

    progress = SearchProgress(8)  # the CLI's default --trials
    kept = [
        {"trial": 0, "status": "FINISHED", "weighted_f1": 0.6},
        {"trial": 1, "status": "FAILED"},
        {"trial": 2, "status": "KILLED"},  # unfinished: it runs again
    ]
    progress.resumed(3, kept)
    progress("start", row={"trial": 2, "trial_id": "c"})
    progress(
        "complete", row={"trial": 2, "trial_id": "c", "status": "FINISHED", "weighted_f1": 0.5}
    )
    assert "done 2/3, running 0, failed 1, best 0.6000" in capsys.readouterr().err


@pytest.mark.slow  # seconds of waiting or a subprocess: CI runs it, `make check` not
def test_the_shipped_paper_config_runs_by_name_with_overrides_that_shrink_it(
    tiny_dir, tmp_path, capsys
):
    from mer_tune.method.config import load_config, shipped_configs

    assert "paper" in shipped_configs()
    paper = load_config("paper")  # the MERTools schedule
    assert (paper.optim.batch_size, paper.optim.lr, paper.finetune.epochs) == (32, 1e-3, 100)
    assert paper.model.hidden == 128 and paper.retrain_epochs() == 100
    small = [f"{k}={v}" for k, v in {
        "pretrain.epochs": 1, "finetune.epochs": 2, "model.hidden": 16, "model.heads": 2,
        "model.head_dims": "[16]", "eval.folds": 2, "optim.batch_size": 64,
    }.items()]  # fmt: skip
    out = tmp_path / "out"
    args = ["run", "--config", "paper", "--data", str(tiny_dir), "--out", str(out)]
    code, stdout, stderr = run_cli(args + [a for s in small for a in ("--set", s)], capsys)
    assert code == 0, stderr
    used = yaml.safe_load((out / "config.yaml").read_text())
    assert used["optim"]["lr"] == 1e-3 and used["finetune"]["epochs"] == 2
    assert used["self_training"]["epochs"] is None  # the finetuning schedule's
    # A path that exists wins over a name.
    mine = tmp_path / "paper"
    mine.write_text(yaml.safe_dump({"optim": {"lr": 0.002}}))
    assert load_config(str(mine)).optim.lr == 0.002


@pytest.mark.parametrize(
    "args, message",
    [
        (["run", "--config", "nosuch"], "unknown config 'nosuch'; shipped: paper"),
        (["run", "--config", "missing.yaml"], "missing.yaml: config file not found"),
        (["search", "--config", "nosuch", "--storage", "s"], "unknown config 'nosuch'; shipped"),
        (["run", "--set", "self_training.init=fresh"], "'pretrained' or 'finetuned'"),
        (["run", "--set", "loss.supervised=sum"], "'released' or 'mean_heads'"),
        (["run", "--set", "model.invariant=both"], "'figure', 'unused' or 'sum'"),
        (["run", "--set", "loss.invariant=mse"], "'none', 'cmd' or 'ntxent'"),
        (["run", "--set", "self_training.epochs=0"], "self_training.epochs"),
        (["run", "--set", "self_training.epochs=true"], "expected a number"),
    ],
)
def test_new_method_options_refuse_bad_values_in_one_line(args, message, capsys, tmp_path):
    args = args + (["--out", str(tmp_path / "o")] if args[0] == "run" else [])
    code, _, stderr = run_cli(args, capsys, cwd=tmp_path)
    assert code == 2, stderr
    assert message in stderr
    assert len(stderr.strip().splitlines()) == 1 and "Traceback" not in stderr


def test_tunes_benign_copy_race_is_left_out_and_other_copy_failures_still_show():
    """The background copy of Tune's state meets the searcher's renamed temporary file:
    that traceback is noise in a search's output; any other failed copy is not."""
    import logging

    from mer_tune.cli import process

    def record(text):
        return logging.LogRecord(
            "ray.train._internal.syncer", logging.WARNING, "", 0, text, (), None
        )

    race = (
        "Last sync command failed with the following error:\nTraceback ...\nFileNotFoundError: "
        "[Errno 2] Failed to open local file '/tmp/ray/x/driver_artifacts/.1d8d-tmp-"
        "search_gen_state-2026.json'"
    )
    disk_full = "Last sync command failed with the following error:\nOSError: No space left"
    process.quiet_libraries()  # as every mer-tune command sets up its logging
    syncer = logging.getLogger("ray.train._internal.syncer")
    assert not syncer.filter(record(race))
    assert syncer.filter(record(disk_full))
    assert syncer.filter(record("anything else"))
