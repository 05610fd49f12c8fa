"""The layout's rules, checked on the import graph (every import under vlpipe/, those inside
functions too): imports point down the data flow, no import cycle, images/ imports nothing of
vlpipe, and no module is over 400 lines."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.helpers.paths import REPO

PACKAGE = REPO / "vlpipe"
#: lowest first: a module may import its own layer's and lower layers' modules only
LAYERS = [
    {"errors", "schema", "images", "version"},
    {"rundir", "storage", "models", "reading"},
    {"outputs", "worker"},
    {"pipeline"},
    {"index"},
    {"search", "dedup", "eval", "curate"},
    {"serve", "train", "api", "frames"},
    {"cli", "__main__", "vlpipe"},  # the package's __init__ exposes the API
]
MAX_LINES = 400
TESTS = REPO / "tests"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    files = [p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts]
    modules = {module_name(p) for p in files}
    graph = {}
    for path in files:
        me = module_name(path)
        found = set()
        for name in imported_names(path):
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name != me:
                found.add(name)
        graph[me] = found
    return graph


def area(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def layer(module: str) -> int:
    for i, names in enumerate(LAYERS):
        if area(module) in names:
            return i
    raise AssertionError(f"{module}: its folder has no layer in tests/test_layout.py")


def test_imports_point_down_the_flow():
    graph = import_graph()
    upward = [
        f"{a} -> {b}"
        for a, deps in graph.items()
        for b in deps
        if area(a) != area(b) and layer(b) > layer(a)
    ]
    assert upward == []
    from_images = [f"{a} -> {b}" for a, d in graph.items() for b in d if area(a) == "images"]
    assert [x for x in from_images if area(x.split(" -> ")[1]) != "images"] == []


def test_no_import_cycle():
    graph = import_graph()
    seen: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        seen[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if seen.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(nxt) :]))
            if nxt not in seen:
                visit(nxt, [*path, nxt])
        seen[node] = 2

    for start in sorted(graph):
        if start not in seen:
            visit(start, [start])


def test_no_module_over_400_lines():
    over = {
        str(p.relative_to(REPO))
        for folder in ("vlpipe", "tests", "bench")
        for p in (REPO / folder).rglob("*.py")
        if not _generated(p) and len(p.read_text("utf-8").splitlines()) > MAX_LINES
    }
    assert sorted(over) == []


def test_no_test_module_imports_another():
    """Test modules share code through tests.helpers (and bench/ data) only: a test module
    imported by another runs its tests twice and ties the two together."""
    wrong = [
        f"{path.relative_to(REPO)} imports {name}"
        for path in TESTS.rglob("*.py")
        if not _generated(path)
        for name in imported_names(path)
        if name.startswith("tests.") and not name.startswith("tests.helpers")
    ]
    assert wrong == []


def imported_names(path: Path) -> list[str]:
    """Every module name an import statement in `path` names, relative imports resolved."""
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    names = []
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            names += [base] + [f"{base}.{a.name}" for a in node.names]
    return names


def _generated(path: Path) -> bool:
    """Benchmark scratch and virtual environments (bench/results/, .venv*), not the project's."""
    parts = path.relative_to(REPO).parts
    return "results" in parts or any(p.startswith(".") for p in parts)
