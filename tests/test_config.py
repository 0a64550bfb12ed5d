import pytest
import yaml

from mer_tune.errors import UsageError
from mer_tune.method.config import (
    build_config,
    get_path,
    load_config,
    parse_set_options,
    valid_paths,
    with_overrides,
)


def test_defaults_are_the_papers_values():
    cfg = build_config()
    assert cfg.self_training.thresholds == {
        "neutral": 0.99,
        "angry": 0.99,
        "happy": 0.99,
        "sad": 0.99,
        "worried": 0.85,
        "surprise": 0.85,
    }
    assert cfg.voting.weights == {"audio": 0.7, "visual": 0.4, "text": 0.3, "fusion": 0.7}
    assert cfg.oversample.target == 1000
    assert cfg.noise.timesteps.audio == 100


def test_unknown_key_lists_the_valid_ones():
    with pytest.raises(
        UsageError, match=r"unknown config key 'optim.lrr'.*lr, weight_decay, batch_size"
    ):
        build_config({"optim": {"lrr": 1}})


@pytest.mark.parametrize(
    "key, message",
    [
        ("device", "unknown config key 'device'; valid keys: data.*, decision.*, eval.*"),
        ("model.hiddn", "unknown config key 'model.hiddn'; valid keys: model.hidden, model."),
        ("model.hidden.x", "unknown config key 'model.hidden.x': model.hidden is a value, not a"),
    ],
)
def test_an_unknown_override_names_what_is_valid_where_it_points(key, message):
    with pytest.raises(UsageError) as err:
        with_overrides(build_config(), {key: 1}, source="--set")
    assert str(err.value).startswith(f"--set: {message}")


@pytest.mark.parametrize(
    "key, value",
    [
        ("model.layers", True),  # read as 1 layer
        ("self_training.thresholds.worried", True),  # read as the threshold 1.0
        ("model.head_dims", [64, False]),
        ("seed", False),
    ],
)
def test_true_or_false_is_not_taken_for_a_number(key, value):
    shown = key if not isinstance(value, list) else f"{key}.1"
    with pytest.raises(UsageError) as err:
        with_overrides(build_config(), {key: value}, source="--set")
    word = "false" if value is False or isinstance(value, list) else "true"
    assert str(err.value) == (
        f"--set: config key '{shown}' = {word}: expected a number, not true or false"
    )


def test_dotted_paths_reach_every_search_knob():
    paths = valid_paths()
    for p in [
        "self_training.thresholds.worried",
        "noise.timesteps.audio",
        "voting.weights.fusion",
        "oversample.target",
        "model.hidden",
        "optim.lr",
    ]:
        assert p in paths
    cfg = with_overrides(
        build_config(), {"self_training.thresholds.worried": 0.7, "optim.lr": 1e-4}
    )
    assert get_path(cfg, "self_training.thresholds.worried") == 0.7
    assert cfg.optim.lr == 1e-4


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"self_training.thresholds.worried": 1.5}, "outside \\(0, 1\\]"),
        ({"voting.weights.audio": -0.1}, "negative"),
        ({"voting.weights": {"audio": 0, "visual": 0, "text": 0, "fusion": 0}}, "all zero"),
        ({"self_training.thresholds.bored": 0.9}, "not a class"),
        ({"model.hiden": 3}, "unknown config key 'model.hiden'"),
        ({"optim.lr": "fast"}, "optim.lr"),
        ({"seed": -1}, "'seed': Input should be greater than or equal to 0"),
        ({"seed": 2**32}, "'seed': Input should be less than 4294967296"),
        ({"eval.seed": -1}, "'eval.seed': Input should be greater than or equal to 0"),
        ({"voting.weights.fusion": float("inf")}, "'voting.weights.fusion': .*finite"),
        ({"voting.weights.fusion": float("nan")}, "'voting.weights.fusion': .*finite"),
        ({"noise.gaussian_std": float("inf")}, "'noise.gaussian_std': .*finite"),
        ({"data.classes": ["sad", "happy", "sad"]}, "data.classes names 'sad' more than once"),
    ],
)
def test_bad_values_are_rejected_with_the_key_named(overrides, message):
    with pytest.raises(UsageError, match=message):
        with_overrides(build_config(), overrides)


def test_yaml_roundtrip(tmp_path):
    cfg = with_overrides(build_config(), {"voting.mode": "logits", "model.hidden": 64})
    path = tmp_path / "c.yaml"
    path.write_text(cfg.to_yaml())
    assert load_config(path) == cfg


def test_malformed_yaml_names_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("optim: [1, 2\n")
    with pytest.raises(UsageError, match="bad.yaml: malformed YAML"):
        load_config(path)


def test_a_binary_config_file_is_one_line_naming_it(tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(b"PK\x03\x04\x80\x02\xff\xfe")
    with pytest.raises(UsageError, match="model.pt: cannot read config \\(not a UTF-8 text file"):
        load_config(path)


def test_set_options_parse_yaml_scalars():
    assert parse_set_options(
        ["optim.lr=1e-4", "pretrain.enabled=false", "model.head_dims=[8, 4]"]
    ) == {"optim.lr": "1e-4", "pretrain.enabled": False, "model.head_dims": [8, 4]}
    with pytest.raises(UsageError, match="expected key=value"):
        parse_set_options(["optim.lr"])


def test_every_key_is_described_and_the_commented_yaml_is_the_default_config(tmp_path, capsys):
    import yaml
    from test_cli import run_cli

    from mer_tune.method.config import Config, describe, load_config, valid_paths

    rows = describe()
    assert {key for key, _, _ in rows} == set(valid_paths())
    assert all(text for _, _, text in rows), [k for k, _, t in rows if not t]
    code, out, _ = run_cli(["config", "--format", "yaml"], capsys)
    assert code == 0 and "# NT-Xent temperature" in out
    (tmp_path / "c.yaml").write_text(out)
    assert load_config(tmp_path / "c.yaml") == Config()
    code, table, _ = run_cli(["config"], capsys)
    assert "eval.select_on" in table and "MERTools' protocol" in table
    assert yaml.safe_load(out)["eval"]["select_on"] == "inner"


def test_a_full_config_of_an_earlier_release_keeps_the_method_it_was_run_with(tmp_path):
    from mer_tune.method.config import build_config, load_config

    # An earlier release's full dump: today's keys less the ones the published defaults added.
    loss = {"temperature": 0.2, "invariant": "ntxent", "invariant_weight": 0.5}
    values = build_config({"loss": loss}).to_dict()
    for section, key in [
        ("self_training", "init"), ("loss", "supervised"), ("model", "invariant"),
        ("loss", "invariant"), ("loss", "temperature_init"),
    ]:  # fmt: skip
        del values[section][key]
    old = tmp_path / "best_config.yaml"
    old.write_text(yaml.safe_dump(values))
    cfg = load_config(old)
    assert (cfg.self_training.init, cfg.loss.supervised, cfg.model.invariant) == (
        "finetuned",
        "mean_heads",
        "sum",
    )
    assert cfg.loss.invariant == "ntxent" and cfg.loss.temperature_init == 0.2
    # A hand-written partial config takes today's defaults.
    partial = tmp_path / "mine.yaml"
    partial.write_text(yaml.safe_dump({"model": {"layers": 1}, "loss": {"temperature": 0.2}}))
    mine = load_config(partial)
    assert (mine.self_training.init, mine.loss.supervised, mine.model.invariant) == (
        "pretrained",
        "released",
        "figure",
    )


def test_a_per_class_key_the_config_leaves_unnamed_reads_its_default():
    """What the staged strategy reads to fix a step's best values for the next: a
    decision offset or threshold not named in the config is its class's default."""
    from mer_tune.method.config import get_path

    cfg = build_config({"decision": {"offsets": {"sad": 0.5}}})
    assert get_path(cfg, "decision.offsets.neutral") == 0.0
    assert get_path(cfg, "decision.offsets.sad") == 0.5
    assert get_path(cfg, "self_training.thresholds.worried") == 0.85
