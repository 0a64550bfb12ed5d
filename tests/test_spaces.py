import pytest

from mer_tune.errors import UsageError
from mer_tune.hpo.spaces import available, load_space, trial_config


@pytest.mark.parametrize("name", available())
def test_every_shipped_space_loads_and_validates(name):
    space = load_space(name)
    assert space.params
    assert [key for key, _ in space.describe()] == list(space.params)


def test_the_five_concerns_are_shipped():
    assert {"thresholds", "noise", "voting", "oversampling", "full"} <= set(available())
    assert load_space("thresholds").params.keys() == {
        f"self_training.thresholds.{c}"
        for c in ["neutral", "angry", "happy", "sad", "worried", "surprise"]
    } | {"self_training.confidence"}
    # The baseline trial runs the released model's confidence.
    from mer_tune.method.config import build_config

    first = load_space("thresholds").defaults(build_config())
    assert first["self_training.confidence"] == "weighted_logits"
    assert {"noise.scale", "noise.gaussian_std", "noise.mask_prob"} <= set(
        load_space("noise").params
    )
    assert 0 in load_space("oversampling").params["oversample.target"].choices


def test_paper_values_are_the_first_point():
    from mer_tune.method.config import build_config

    point = load_space("thresholds").defaults(build_config())
    assert point["self_training.thresholds.sad"] == 0.99
    assert point["self_training.thresholds.surprise"] == 0.85


@pytest.mark.parametrize(
    "body, message",
    [
        (
            "params:\n  optim.lrr: {type: float, low: 0.1, high: 0.2}\n",
            "params.optim.lrr: unknown config key; valid keys:",
        ),
        (
            "params:\n  optim.lr: {type: float, low: 0.2, high: 0.1}\n",
            "params.optim.lr: low \\(0.2\\) > high \\(0.1\\)",
        ),
        (
            "params:\n  optim.lr: {type: float, low: 0, high: 0.1, log: true}\n",
            "a log scale needs low > 0",
        ),
        ("params:\n  optim.lr: {type: float, low: fast, high: 0.1}\n", "'low' must be a number"),
        (
            "params:\n  optim.lr: {type: normal, low: 0, high: 0.1}\n",
            "expected \\{type: float\\|int\\|categorical",
        ),
        (
            "params:\n  self_training.thresholds.sad: {type: float, low: 0.5, high: 1.5}\n",
            "value 1.5 is not allowed",
        ),
        (
            "params:\n  voting.weights.text: {type: float, low: -1, high: 1}\n",
            "value -1.0 is not allowed.*negative",
        ),
        ("params:\n  optim.lr: [1, 2\n", "malformed YAML"),
        (
            "params:\n  optim.lr: {type: float, low: 0.001, high: 0.01, step: -0.001}\n",
            "'step' must be a positive number, got -0.001",
        ),
        (
            "params:\n  oversample.target: {type: int, low: 0, high: 100, step: x}\n",
            "'step' must be a positive number, got 'x'",
        ),
        (
            "params:\n  oversample.target: {type: int, low: 0, high: 1000, step: 0.5}\n",
            "params.oversample.target: an int 'step' must be a whole number, got 0.5",
        ),
        (
            "params:\n  optim.lr: {type: float, low: 0.001, high: .inf}\n",
            "params.optim.lr: 'high' must be finite, got inf",
        ),
        (
            "params:\n  model.heads: {type: int, low: 1, high: 8}\n",
            "params.model.heads: value 3 is not allowed \\(model.hidden \\(128\\) must be divisible",
        ),
        ("params: {}\n", "non-empty 'params'"),
        (
            "params:\n  optim.lr: {type: float, low: 0.1, high: 0.2}\nfixed:\n  model.hiden: 3\n",
            "unknown config key 'model.hiden'",
        ),
    ],
)
def test_broken_space_files_name_the_file_and_key(tmp_path, body, message):
    path = tmp_path / "broken.yaml"
    path.write_text(body)
    with pytest.raises(UsageError, match=message) as err:
        load_space(str(path))
    assert str(path) in str(err.value)


def test_unknown_space_name_lists_the_available_ones():
    with pytest.raises(
        UsageError,
        match="unknown search space 'nope'; available: decision, full, noise, oversampling",
    ):
        load_space("nope")


def test_a_folder_given_as_space_is_one_line(tmp_path):
    with pytest.raises(UsageError, match="is a folder; --space names a shipped space"):
        load_space(str(tmp_path))


def test_per_class_parameters_expand_over_the_classes_the_data_has():
    from mer_tune.method.config import build_config, with_overrides

    ten = [f"c{i}" for i in range(10)]
    # The paper's per-class thresholds apply to the classes a list has: no need to clear them.
    cfg = with_overrides(build_config(), {"data.classes": ten})
    assert cfg.self_training.thresholds == {} and cfg.threshold_of("c3") == 0.95
    sp = load_space("thresholds", cfg)
    assert list(sp.params) == [f"self_training.thresholds.{c}" for c in ten] + [
        "self_training.confidence"
    ]
    assert sp.defaults(cfg)["self_training.thresholds.c0"] == 0.95
    mer = load_space("thresholds")
    assert (
        len(mer.params) == 7
        and mer.defaults(build_config())["self_training.thresholds.sad"] == 0.99
    )
    mixed = with_overrides(build_config(), {"data.classes": ["neutral", "sad", "bored"]})
    assert mixed.self_training.thresholds == {"neutral": 0.99, "sad": 0.99}
    with pytest.raises(UsageError, match="thresholds.surpise is not a class"):
        with_overrides(build_config(), {"self_training.thresholds.surpise": 0.5})


def test_a_staged_step_of_a_wildcard_space_keeps_its_range():
    sp = load_space("full")
    step = sp.subspace(["self_training.thresholds.sad"], "thresholds", {})
    assert list(step.params) == ["self_training.thresholds.sad"]
    assert step.params["self_training.thresholds.sad"].high == 1.0


def _conditional(tmp_path, when, extra=""):
    path = tmp_path / "cond.yaml"
    path.write_text(
        "params:\n"
        "  noise.kind: {type: categorical, choices: [ddpm, gaussian, mask]}\n"
        f"  noise.gaussian_std: {{type: float, low: 0.1, high: 2.0, when: {when}}}\n" + extra
    )
    return path


def test_a_conditional_parameter_is_suggested_only_when_its_condition_holds(tmp_path):
    import optuna

    from mer_tune.hpo.optuna_adapter import DefineByRun
    from mer_tune.method.config import build_config

    sp = load_space(str(_conditional(tmp_path, "{noise.kind: gaussian}")))
    assert sp.conditions == {"noise.gaussian_std": {"noise.kind": ["gaussian"]}}
    # The baseline (ddpm) does not use the gaussian std.
    assert sp.defaults(build_config()) == {"noise.kind": "ddpm"}
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(lambda t: DefineByRun(sp)(t) or 0.0, n_trials=30)
    for trial in study.trials:
        used = "noise.gaussian_std" in trial.params
        assert used == (trial.params["noise.kind"] == "gaussian")
    assert any("noise.gaussian_std" in t.params for t in study.trials)
    # An unused value in a results table (NaN) leaves the config's own value.
    cfg = trial_config(build_config(), {"noise.kind": "ddpm", "noise.gaussian_std": float("nan")})
    assert cfg.noise.gaussian_std == build_config().noise.gaussian_std


def test_a_condition_on_an_unsearched_key_is_settled_against_the_base_config(tmp_path):
    from mer_tune.method.config import build_config, with_overrides

    path = tmp_path / "only.yaml"
    path.write_text(
        "params:\n"
        "  noise.mask_prob: {type: float, low: 0.1, high: 0.5, when: {noise.kind: mask}}\n"
        "  optim.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}\n"
    )
    assert list(load_space(str(path)).params) == ["optim.lr"]
    masked = with_overrides(build_config(), {"noise.kind": "mask"})
    assert list(load_space(str(path), masked).params) == ["noise.mask_prob", "optim.lr"]


@pytest.mark.parametrize(
    "when, message",
    [
        ("{noise.kind: poisson}", "'poisson' is not a choice of noise.kind"),
        ("{noise.kindd: gaussian}", "names noise.kindd, which is neither"),
        ("gaussian", "'when' must map a parameter"),
    ],
    ids=["not-a-choice", "unknown-key", "not-a-mapping"],
)
def test_a_bad_condition_is_one_line_naming_the_parameter(tmp_path, when, message):
    path = _conditional(tmp_path, when)
    with pytest.raises(UsageError, match=message) as err:
        load_space(str(path))
    assert "params.noise.gaussian_std" in str(err.value) and "\n" not in str(err.value)


def test_a_value_another_searched_key_makes_valid_is_not_refused(tmp_path):
    path = tmp_path / "heads.yaml"
    path.write_text(
        "params:\n  model.heads: {type: int, low: 1, high: 8}\n"
        "  model.hidden: {type: categorical, choices: [128, 840]}\n"
    )
    assert list(load_space(str(path)).params) == ["model.heads", "model.hidden"]
    # Heads 5 divides none of these widths.
    path.write_text(path.read_text().replace("840", "96, 192"))
    with pytest.raises(UsageError, match="params.model.heads: value 5 is not allowed"):
        load_space(str(path))
