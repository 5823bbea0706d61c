"""The package's shape, read from its source (nothing imported): no import cycles, no module that
reaches into another's private names or into Ray's and Optuna's internals outside the one adapter
(ecg_tune/search/upstream.py), no overlong module.

Every `import` counts, at module level and inside functions alike: a lazy import still ties two
modules together (the same rule as ../shared/tools/import_cycles.py).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "ecg_tune"
# The one module allowed to touch Ray's and Optuna's private parts, each use with a contract test
# (tests/test_upstream.py) that fails loudly when an upgrade changes it.
UPSTREAM_ADAPTER = "ecg_tune.search.upstream"
UPSTREAM = ("ray", "optuna")
MAX_LINES = 500


def _modules() -> dict[str, Path]:
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    return modules


MODULES = _modules()


def _imports(name: str, tree: ast.AST) -> Iterator[tuple[str, list[str], int]]:
    """(imported module as written, the names taken from it, line) for each import statement."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, [], node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = name.split(".")
                keep = len(parts) - node.level + (1 if MODULES[name].name == "__init__.py" else 0)
                base = ".".join(parts[:keep] + ([base] if base else []))
            yield base, [alias.name for alias in node.names], node.lineno


def _own_module(dotted: str) -> str | None:
    """The package module a dotted import path lands in (its longest known prefix)."""
    while dotted and dotted not in MODULES:
        dotted = dotted.rpartition(".")[0]
    return dotted or None


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        edges: set[str] = set()
        for base, names, _ in _imports(name, ast.parse(path.read_text(encoding="utf-8"))):
            for target in [base, *(f"{base}.{n}" for n in names)]:
                module = _own_module(target)
                # A package's __init__ re-exporting its children is not a cycle: an edge from a
                # module to its own parent package counts only when that package holds code.
                if module and module != name and not _is_trivial_parent(module, name):
                    edges.add(module)
        graph[name] = edges
    return graph


def _is_trivial_parent(module: str, importer: str) -> bool:
    if not importer.startswith(module + "."):
        return False
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    return all(isinstance(node, (ast.Import, ast.ImportFrom, ast.Expr, ast.Assign)) for node in tree.body)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in graph.get(node, ()):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_the_import_graph_has_no_cycle() -> None:
    cycles = _cycles(_graph())
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_a_cycle_is_found() -> None:
    # The check itself: a graph with a cycle is reported, one without is not.
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def _private_uses(name: str, source: str) -> list[str]:
    """Private names of other modules this module imports, private parts of Ray/Optuna it imports,
    and private attributes it reads of any object but its own (`self._x`, `cls._x`): the type of
    `trial._trial_id` cannot be told from source, so every such access counts."""
    found = []
    tree = ast.parse(source)
    for base, names, line in _imports(name, tree):
        root = base.split(".")[0]
        if root == "ecg_tune":
            found += [f"{name}:{line} imports {base}.{n}" for n in names if n.startswith("_") and n != "__version__"]
            found += [f"{name}:{line} imports {base}" for part in base.split(".") if part.startswith("_")
                      and part != "__init__"]
        elif root in UPSTREAM:
            private = [p for p in base.split(".") if p.startswith("_")] + [n for n in names if n.startswith("_")]
            found += [f"{name}:{line} imports {base} ({', '.join(private)})"] if private else []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            if not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                found.append(f"{name}:{node.lineno} reads {ast.unparse(node)}")
    return found


def test_no_private_names_across_modules_or_of_ray_and_optuna() -> None:
    found = []
    for name, path in MODULES.items():
        if name != UPSTREAM_ADAPTER:
            found += _private_uses(name, path.read_text(encoding="utf-8"))
    assert not found, "private names used outside their module (or the upstream adapter):\n" + "\n".join(found)


def test_private_uses_are_found() -> None:
    source = ("from ecg_tune.report import _curve\nimport ray._private.services\nfrom optuna.trial import _x\n"
              "import ray\nray._private.worker.global_worker\ntrial._trial_id\nself._mine\n")
    found = _private_uses("ecg_tune.example", source)
    assert len(found) == 5, found


def test_no_module_is_overlong() -> None:
    long = {name: n for name, path in MODULES.items()
            if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines (split along a seam of responsibility): {long}"
