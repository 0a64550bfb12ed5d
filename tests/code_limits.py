"""The size limits of the package's code, and where it breaks them (`make limits`).

    python tests/code_limits.py

Limits: no module over 400 lines, no function over 60 lines, no function taking more
than 8 parameters (self and cls not counted; click commands excepted, since their
parameters are their options), and no import circle between mer_tune's modules (imports
inside functions count). Prints every breach and their count; exits 0 (a report).
tests/test_code_limits.py holds the suite to them, with the list of breaches still open.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "mer_tune"
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60
MAX_PARAMETERS = 8


def module_name(path: Path, package: Path = PACKAGE) -> str:
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_click_command(node: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    for deco in node.decorator_list:
        target = deco.func if isinstance(deco, ast.Call) else deco
        name = ast.unparse(target)
        if name.endswith((".command", ".group")) or name in ("command", "group"):
            return True
    return False


def _parameters(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    args = node.args
    names = [a.arg for a in (*args.posonlyargs, *args.args, *args.kwonlyargs)]
    return len([n for n in names if n not in ("self", "cls")])


def breaches(package: Path = PACKAGE) -> list[str]:
    """Every breach of the limits, one line each (path:line what)."""
    found: list[str] = []
    modules = {module_name(p, package): p for p in sorted(package.rglob("*.py"))}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        text = path.read_text()
        rel = path.relative_to(package.parent)
        lines = len(text.splitlines())
        if lines > MAX_MODULE_LINES:
            found.append(f"{rel}: {lines} lines (limit {MAX_MODULE_LINES})")
        tree = ast.parse(text)
        graph[name] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    found.append(
                        f"{rel}:{node.lineno} {node.name}: {length} lines "
                        f"(limit {MAX_FUNCTION_LINES})"
                    )
                count = _parameters(node)
                if count > MAX_PARAMETERS and not _is_click_command(node):
                    found.append(
                        f"{rel}:{node.lineno} {node.name}: {count} parameters "
                        f"(limit {MAX_PARAMETERS})"
                    )
            graph[name] |= _imported(node, name, modules)
    found += [f"import circle: {' -> '.join(c)}" for c in circles(graph)]
    return found


def _imported(node: ast.AST, importer: str, modules: dict[str, Path]) -> set[str]:
    """The mer_tune modules an import statement brings in."""
    out: set[str] = set()
    if isinstance(node, ast.Import):
        out = {a.name for a in node.names if a.name in modules}
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        base = node.module
        for alias in node.names:
            full = f"{base}.{alias.name}"
            if full in modules:
                out.add(full)  # `from mer_tune.hpo import confirm`: the module confirm
            elif base in modules:
                out.add(base)
    out.discard(importer)
    return out


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import circles: each strongly connected group of two or more modules, as one
    path around it (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return groups


def main() -> None:
    found = breaches()
    for line in found:
        print(line)
    print(f"{len(found)} breaches of the code limits", file=sys.stderr)


if __name__ == "__main__":
    sys.setrecursionlimit(10_000)
    main()
