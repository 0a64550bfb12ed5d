"""The one YAML reader for what users give (configs, spaces, --set values): small inputs
that would hang, crash or silently mislead are refused in one line."""

import os
import time

import pytest

from mer_tune import user_yaml
from mer_tune.errors import UsageError
from mer_tune.hpo.spaces import load_space
from mer_tune.method.config import load_config, parse_set_options

LAUGHS = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{c}: &{c} [{', '.join(['*' + p] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi", strict=True)
)


def test_nested_aliases_are_refused_at_once_in_a_config_a_space_and_a_set_value(tmp_path):
    (tmp_path / "laughs.yaml").write_text(LAUGHS)
    started = time.monotonic()
    with pytest.raises(UsageError, match=r"laughs.yaml: line 2: YAML aliases \(\*name\)"):
        load_config(tmp_path / "laughs.yaml")
    with pytest.raises(UsageError, match="laughs.yaml: line 2: YAML aliases"):
        load_space(str(tmp_path / "laughs.yaml"))
    with pytest.raises(UsageError, match="^--set .*: line 1: YAML aliases"):
        parse_set_options(["data.classes=[&a x, *a, *a]"])
    assert time.monotonic() - started < 5  # refused, not expanded


def test_a_key_given_twice_is_refused_naming_the_key_and_both_lines(tmp_path):
    space = tmp_path / "twice.yaml"
    space.write_text(
        "params:\n"
        "  optim.lr: {type: float, low: 0.001, high: 0.01}\n"
        "  model.dropout: {type: float, low: 0.1, high: 0.5}\n"
        "  optim.lr: {type: float, low: 0.1, high: 0.2}\n"
    )
    with pytest.raises(
        UsageError, match=r"twice.yaml: key 'optim.lr' is given twice \(lines 2 and 4\)"
    ):
        load_space(str(space))
    config = tmp_path / "config.yaml"
    config.write_text("optim:\n  lr: 0.1\n  lr: 0.2\n")
    with pytest.raises(UsageError, match=r"key 'lr' is given twice \(lines 2 and 3\)"):
        load_config(config)
    assert user_yaml.parse("a: {b: 1}\nc: {b: 2}\n") == {"a": {"b": 1}, "c": {"b": 2}}


def test_deep_nesting_is_one_line_not_a_recursion_error(tmp_path):
    deep = "[" * 5000 + "]" * 5000
    (tmp_path / "deep.yaml").write_text(f"model: {deep}\n")
    with pytest.raises(UsageError, match="deep.yaml: line 1: nested deeper than 32 levels"):
        load_config(tmp_path / "deep.yaml")
    with pytest.raises(UsageError, match="nested deeper than 32 levels"):
        parse_set_options([f"model.head_dims={deep}"])


def test_only_a_regular_file_of_bounded_size_is_read(tmp_path):
    with pytest.raises(UsageError, match="/dev/zero: not a regular file"):
        load_config("/dev/zero")
    with pytest.raises(UsageError, match="/dev/zero: not a regular file"):
        load_space("/dev/zero")
    big = tmp_path / "big.yaml"
    big.write_text("# " + "x" * user_yaml.MAX_BYTES + "\n")
    with pytest.raises(UsageError, match=r"big.yaml: \d+ bytes; a config file holds at most"):
        load_config(big)
    loop = tmp_path / "loop.yaml"
    os.symlink(loop, loop)
    with pytest.raises(UsageError, match="loop.yaml: cannot read config"):
        load_config(loop)
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    with pytest.raises(UsageError, match="fifo.yaml: not a regular file"):
        load_config(fifo)  # refused, not waited on


def test_messages_quote_a_bounded_excerpt_of_the_input():
    long = "x" * 10_000
    with pytest.raises(UsageError) as err:
        parse_set_options([f"optim.lr{long}"])  # no '='
    assert len(str(err.value)) < 300
    with pytest.raises(UsageError) as err:
        from mer_tune.method.config import build_config

        build_config({"optim": {"lr": long}})
    assert len(str(err.value)) < 300 and "..." in str(err.value)
