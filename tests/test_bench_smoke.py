"""Every benchmark with a smoke mode runs it (tiny sizes, seconds, nothing published), so a change
that breaks a benchmark fails `make test`; and no benchmark imports a test module."""

from __future__ import annotations

import ast
import subprocess
import sys

import pytest

from tests.helpers.paths import REPO

BENCH = REPO / "bench"
#: smoke modes that read ../shared/datasets (skipped where a clone has none)
NEEDS_SHARED = {"quality_agreement", "faces", "cpu_default", "gpu"}
#: smoke modes that take minutes, not seconds (measured on the 2-core machine while other work
#: ran: gpu 319 s, faces 207 s, models_cpu 186 s, cpu_default 177 s, quality_agreement 99 s):
#: `make test-all` runs them; the default run keeps to the ones that take seconds
SLOW = {"gpu", "faces", "models_cpu", "cpu_default", "quality_agreement"}


def smoke_benchmarks() -> list[str]:
    """Benchmarks whose source declares a --smoke flag."""
    return sorted(p.stem for p in BENCH.glob("*.py") if '"--smoke"' in p.read_text("utf-8"))


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
    result = subprocess.run(
        [sys.executable, "-m", f"bench.{name}", "--smoke"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, (result.stdout[-2000:], result.stderr[-4000:])
