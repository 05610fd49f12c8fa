"""Every benchmark with a smoke mode runs it (tiny sizes, seconds, nothing published), so a change
that breaks a benchmark fails `make test`; no benchmark imports a test module, and benchmarks use
vlpipe's public names only."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.paths import REPO

BENCH = REPO / "bench"
#: smoke modes that read ../shared/datasets (skipped where a clone has none)
NEEDS_SHARED = {"quality_agreement", "faces", "cpu_default", "gpu", "dedup_quality"}
#: smoke modes that take minutes, not seconds (measured on the 2-core machine while other work
#: ran: gpu 319 s, faces 207 s, models_cpu 186 s, cpu_default 177 s, quality_agreement 99 s; at
#: load 8-10: orchestration 168 s, four vlpipe runs, one strace'd with 2 workers; mini_lowres
#: 152 s, three runs and three `vlpipe eval`; hybrid 114 s, two runs with their indexes; modes:
#: its first run makes clip-retrieval's own venv and a full-size CLIP; precision_quality 65 s,
#: two runs and two evals), or that repeat a path a default one covers with more processes
#: (e2e_before_after 50 s, a git checkout and bench/e2e's vlpipe contender twice; scaling 47 s,
#: that contender twice): `make test-all` runs them; the default run keeps to the cheaper ones
SLOW = {"gpu", "faces", "models_cpu", "cpu_default", "quality_agreement", "e2e_before_after",
        "scaling", "orchestration", "mini_lowres", "hybrid", "modes",
        "precision_quality"}  # fmt: skip
#: smoke modes that need a tool beside the Python packages (skipped where it is absent)
NEEDS_TOOL = {"profile": "py-spy"}
#: smoke modes that check out an earlier commit with git (skipped outside a git clone)
NEEDS_GIT = {"cpu_default", "e2e_before_after"}


def smoke_benchmarks() -> list[str]:
    """Benchmarks whose source declares a --smoke flag (not bench/__main__.py, which runs them
    all: `python -m bench --smoke`)."""
    return sorted(
        p.stem
        for p in BENCH.glob("*.py")
        if '"--smoke"' in p.read_text("utf-8") and not p.stem.startswith("_")
    )


def test_bench_imports_no_test_module():
    for path in BENCH.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text("utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            assert not [n for n in names if n == "tests" or n.startswith("tests.")], path.name


def test_the_search_benchmark_has_a_smoke_mode():
    assert "search" in smoke_benchmarks()  # `python -m bench.search` broke unnoticed once


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=[pytest.mark.slow] * (n in SLOW)) for n in smoke_benchmarks()]
)
def test_benchmark_smoke_mode_runs(name, request):
    if name in NEEDS_SHARED:
        request.getfixturevalue("flickr")  # skips with a reason where ../shared is absent
    tool = NEEDS_TOOL.get(name)
    if tool and not (
        shutil.which(tool) or shutil.which(tool, path=str(Path(sys.executable).parent))
    ):
        pytest.skip(f"bench.{name} needs {tool} (pip install '.[bench]')")
    if name in NEEDS_GIT and not (REPO / ".git").exists():
        pytest.skip(f"bench.{name} checks out an earlier commit: needs a git clone")
    result = subprocess.run(
        [sys.executable, "-m", f"bench.{name}", "--smoke"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, (result.stdout[-2000:], result.stderr[-4000:])


# -- public names ---------------------------------------------------------------------------------


def public_names(module: str) -> set[str]:
    """`__all__` of a vlpipe module (the top-level package's included), read from its source
    without importing it."""
    path = REPO / module.replace(".", "/")
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    for node in ast.parse(path.read_text("utf-8")).body:
        targets = node.targets if isinstance(node, ast.Assign) else []
        if any(isinstance(t, ast.Name) and t.id == "__all__" for t in targets):
            return {n for n in ast.literal_eval(node.value) if not n.startswith("_")}
    return set()


def non_public_imports(source: str) -> list[str]:
    """The vlpipe imports of `source` that are not public: a public name is listed in the
    `__all__` of the module it is imported from (`vlpipe` itself included) and does not start
    with "_"; `import vlpipe.x` is refused (what it reaches cannot be checked), `import vlpipe`
    is fine (its names are the top-level API)."""
    bad = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            bad += [f"import {a.name}" for a in node.names if a.name.startswith("vlpipe.")]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "vlpipe":
            public = public_names(node.module)
            bad += [f"from {node.module} import {a.name}" for a in node.names
                    if a.name not in public]  # fmt: skip
    return bad


def test_benchmarks_import_public_vlpipe_names_only():
    found = {p.name: non_public_imports(p.read_text("utf-8")) for p in BENCH.glob("*.py")}
    assert {k: v for k, v in found.items() if v} == {}


def test_the_public_names_check_refuses_internals():
    assert non_public_imports("import vlpipe\nfrom vlpipe import run, open") == []
    assert non_public_imports("from vlpipe.worker.handlers import prepare_image") == []
    assert non_public_imports("from vlpipe.pipeline.run import make_handler") == [
        "from vlpipe.pipeline.run import make_handler"
    ]  # a real function, not in the module's __all__
    assert non_public_imports("def f():\n    from vlpipe.worker.handlers import _LOADED") != []
    assert non_public_imports("from vlpipe.search import hits") != []  # a module, not a name
    assert non_public_imports("import vlpipe.rundir") == ["import vlpipe.rundir"]


def test_every_name_in_a_vlpipe_all_exists():
    """A stale `__all__` entry (a renamed function) would make a public name that is not there."""
    stale = {}
    for path in (REPO / "vlpipe").rglob("*.py"):
        if path == REPO / "vlpipe" / "__init__.py":
            continue  # the package's names load lazily (its __getattr__)
        tree = ast.parse(path.read_text("utf-8"))
        defined = set()
        for node in tree.body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                defined.add(node.name)
            elif isinstance(node, ast.Assign | ast.AnnAssign):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                defined |= {t.id for t in targets if isinstance(t, ast.Name)}
            elif isinstance(node, ast.Import | ast.ImportFrom):
                defined |= {(a.asname or a.name).split(".")[0] for a in node.names}
        module = ".".join(path.relative_to(REPO).with_suffix("").parts)
        missing = public_names(module) - defined
        if missing:
            stale[module] = sorted(missing)
    assert stale == {}
