"""The layout keeps its promises: the method needs neither Ray nor MLflow nor the search
layer, the data layer needs neither, and one module writes to MLflow."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "mer_tune"


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize(
    "folder, forbidden",
    [
        ("method", ("ray", "mlflow", "optuna", "mer_tune.hpo")),
        ("data", ("ray", "mlflow", "optuna", "mer_tune.hpo", "mer_tune.method")),
    ],
)
def test_lower_layers_import_nothing_from_higher_ones(folder, forbidden):
    for path in (PACKAGE / folder).glob("*.py"):
        bad = {m for m in _imports(path) if m.split(".")[0] in forbidden or m.startswith(forbidden)}
        assert not bad, f"{path.name} imports {sorted(bad)}"


def test_one_module_writes_to_mlflow():
    writers = [
        p.relative_to(PACKAGE).as_posix()
        for p in PACKAGE.rglob("*.py")
        if any(m.split(".")[0] == "mlflow" for m in _imports(p))
    ]
    assert writers == ["hpo/tracking.py"]
