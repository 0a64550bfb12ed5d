"""The one reader of YAML a user gives: config files, space files and `--set` values.

YAML's safe loader still lets a small input do harm or mislead: nested aliases expand
a few hundred bytes into gigabytes (the "billion laughs"), deep nesting exhausts the
recursion limit, and a key given twice silently keeps the last value. This reader
refuses aliases, duplicate keys (naming both lines), nesting deeper than MAX_DEPTH and
files over MAX_BYTES, reads only regular files, and quotes at most EXCERPT characters of
the input in any message.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from mer_tune.errors import UsageError
from mer_tune.user_files import read_text

MAX_BYTES = 1 << 20  # configs and spaces are a few kilobytes
MAX_DEPTH = 32  # the deepest shipped file nests 4 levels
EXCERPT = 60


class InputError(ValueError):
    """What is wrong with the YAML, in words (the caller adds where it came from)."""


def excerpt(value: Any, limit: int = EXCERPT) -> str:
    """repr() of a value, cut to `limit` characters: messages quote user input bounded."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _Loader(yaml.SafeLoader):
    def compose_node(self, parent, index):  # noqa: ANN001 (PyYAML's signature)
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise InputError(f"line {mark.line + 1}: YAML aliases (*name) are not accepted")
        self._depth = getattr(self, "_depth", 0) + 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise InputError(f"line {mark.line + 1}: nested deeper than {MAX_DEPTH} levels")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node, deep=False):  # noqa: ANN001
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                first = seen.setdefault(key, line)
            except TypeError:  # an unhashable key: the base class says so
                break
            if first != line:
                raise InputError(f"key {excerpt(key)} is given twice (lines {first} and {line})")
        return super().construct_mapping(node, deep=deep)


class _Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True  # every value written out in full: what mer-tune writes, it reads back


def dump(value: Any, **options: Any) -> str:
    """YAML text of plain values, without aliases (PyYAML writes `&id001` / `*id001`
    for a value that occurs twice, which this module's reader refuses)."""
    return yaml.dump(value, Dumper=_Dumper, **options)


def parse(text: str) -> Any:
    """YAML text as Python values; InputError or yaml.YAMLError when it is refused."""
    loader = _Loader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def read_file(path: Path, what: str) -> Any:
    """A YAML file as Python values, or UsageError naming the file: only a regular file
    of at most MAX_BYTES of UTF-8 text, parsed by `parse`. `what` names the file's role
    in messages ("config", "search space")."""
    text = read_text(path, what, MAX_BYTES)
    try:
        return parse(text)
    except InputError as err:
        raise UsageError(f"{path}: {err}") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        problem = getattr(err, "problem", None) or "not valid YAML"
        where = f" at line {mark.line + 1}" if mark else ""
        raise UsageError(f"{path}: malformed YAML ({problem}{where})") from None
