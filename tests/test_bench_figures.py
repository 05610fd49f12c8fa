"""Every speed, memory and ratio figure in README.md, BENCHMARKS.md's prose and docs/*.md comes
from a committed results file (bench/figures.py): a figure left over from a superseded run fails
`make test`."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from bench.figures import (
    Found,
    default_files,
    excused,
    figures_in,
    known_numbers,
    matches,
    stale,
    unused_exceptions,
)
from tests.helpers.paths import REPO


def check(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bench.figures", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_every_prose_figure_comes_from_a_results_file():
    result = check()
    assert result.returncode == 0, result.stdout[-4000:]


def test_a_planted_stale_figure_fails_the_check(tmp_path):
    readme = tmp_path / "README.md"
    text = (REPO / "README.md").read_text("utf-8")
    readme.write_text(text + "\nvlpipe runs 9,876.5 images/s on this machine (e2e block).\n")
    result = check(str(readme))
    assert result.returncode == 1
    line = len(text.splitlines()) + 2
    assert f"README.md:{line}: '9,876.5 images/s' is in no bench/results/e2e*.json" in result.stdout


def results_dir(tmp_path: Path) -> Path:
    """A results folder with one benchmark's record, as bench.common writes it."""
    folder = tmp_path / "results"
    folder.mkdir(exist_ok=True)
    figure = {"metric": "throughput", "unit": "images/s", "vlpipe": 28.7958, "baseline": 20.8809,
              "baseline_name": "naive script", "ratio": 1.379, "goal": ">= 3.0", "met": False,
              "note": ""}  # fmt: skip
    runs = [{"peak_rss_mb": 1393, "p95_ms": 34.2, "t2i_r1": 0.3333}]
    record = {"name": "e2e", "title": "End to end on CPU: vlpipe-mini captions + embeddings",
              "figures": [figure], "details": {"runs": runs}}  # fmt: skip
    (folder / "e2e.json").write_text(json.dumps(record))
    other = {"name": "tower", "title": "Tower", "figures": [],
             "details": {"images_s": 16.4, "speedup_ratio": 2.1}}  # fmt: skip
    (folder / "tower.json").write_text(json.dumps(other))
    return folder


def flagged(tmp_path: Path, prose: str) -> list[str]:
    doc = tmp_path / "doc.md"
    doc.write_text(prose)
    return [f.text for f in stale([doc], repo=tmp_path, results=results_dir(tmp_path))]


def test_figures_match_at_the_precision_the_prose_shows(tmp_path):
    assert (
        flagged(tmp_path, "the e2e block: 28.8 images/s, 29 images/s, 1.38x, 1.4x and 3x\n") == []
    )
    assert flagged(tmp_path, "the e2e block: 28.9 images/s and 1.37x\n") == [
        "28.9 images/s",
        "1.37x",
    ]


def test_units_convert_and_ranges_check_both_ends(tmp_path):
    assert flagged(tmp_path, "e2e block: 1.4 GB (1,393 MB); 34 ms per batch; 0.0342 s\n") == []
    assert flagged(tmp_path, "e2e block: 1.3-1.4 GB\n") == ["1.3-1.4 GB"]
    assert flagged(tmp_path, "e2e block: 1.4 MB\n") == ["1.4 MB"]  # a number of the wrong quantity


def test_a_paragraph_that_cites_a_benchmark_is_held_to_its_results(tmp_path):
    # tower.json holds both; a figure under 3 significant digits must still say where it is from
    assert flagged(tmp_path, "vlpipe runs 16.4 images/s, 2.1x\n") == ["2.1x"]
    assert flagged(tmp_path, "vlpipe runs 16.4 images/s, 2.1x (tower block)\n") == []
    cited = "vlpipe runs 16.4 images/s, 2.1x (the e2e block)\n"
    assert flagged(tmp_path, cited) == ["16.4 images/s", "2.1x"]
    linked = "[16.4 images/s](BENCHMARKS.md#end-to-end-on-cpu-vlpipe-mini-captions--embeddings)\n"
    assert flagged(tmp_path, linked) == ["16.4 images/s"]


def test_generated_blocks_history_and_inline_code_are_not_prose(tmp_path):
    prose = (
        "<!-- bench:e2e -->\n| 7.7 images/s |\n<!-- /bench:e2e -->\n\n"
        "<!-- figures:history -->\nRound 3 (2026-11-20, superseded): 5.5 images/s\n"
        "<!-- /figures:history -->\n\n"
        "Run `vlpipe run --timeout 45 s` on 2 cores, batch 32, 224x224 px, 2026-12-01, v2.45.\n"
        "A 128 x 128 copy.\n\n```\nvlpipe index out/ --memory-budget 4GB\n```\n\n"
        "After the blocks (e2e block): 6.6 ms\n"
    )
    assert flagged(tmp_path, prose) == ["6.6 ms"]


def test_figures_wrapped_across_lines_are_found(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text("from 5.01 images/s to 16.4\nimages/s\n")
    assert [(f.line, f.text) for f in figures_in(doc, tmp_path, {})] == [
        (1, "5.01 images/s"),
        (1, "16.4 images/s"),
    ]


def test_the_committed_results_hold_typed_figures():
    known = known_numbers()
    assert "e2e" in known and known["e2e"]["rate"], "bench/results/e2e.json has no images/s"
    saved = json.loads((REPO / "bench" / "results" / "e2e.json").read_text())
    ratio = saved["figures"][0]["ratio"]  # the e2e ratio against the naive script
    assert matches(f"{ratio:.2f}", "x", known["e2e"])
    assert not matches(f"{ratio + 0.5:.2f}", "x", known["e2e"])


def test_an_exception_excuses_only_the_figure_it_names():
    entry = [("README.md", "counts 4x when", "a fusion weight, a setting")]
    line = "the keyword ranking counts 4x when the query's rarest word is rare, and 2x otherwise"
    four, two = (Found("README.md", 1, t, t[0], "x", line) for t in ("4x", "2x"))
    assert excused(four, entry) and not excused(two, entry)
    assert not excused(Found("docs/runners.md", 1, "4x", "4", "x", line), entry)


def test_every_exception_still_excuses_a_figure():
    assert unused_exceptions(default_files()) == []
    assert unused_exceptions(default_files(), [("README.md", "gone 9x", "")]) == [
        ("README.md", "gone 9x", "")
    ]


def test_table_columns_with_a_unit_or_a_quality_metric_in_the_header_are_figures(tmp_path):
    table = (
        "From the e2e block:\n\n"
        "| run | images/s (median) | t2i R@1 | rounds |\n|---|---|---|---|\n"
        "| now | **28.8** | 0.333 | 3 |\n| before | 16.4 | 0.334 | 2 |\n"
    )
    assert flagged(tmp_path, table) == ["16.4", "0.334"]


def test_the_readme_quality_table_is_held_to_the_shipped_model_record(tmp_path):
    text = (REPO / "README.md").read_text("utf-8")
    header = text.index("| text-to-image R@1")
    row_start = text.index("\n| ", text.index("\n|---", header) + 1) + 1
    first = re.search(r"\d+\.\d{3}", text[row_start:])
    wrong = f"{float(first.group(0)) + 0.0071:.3f}"
    at = row_start + first.start()
    readme = tmp_path / "README.md"
    readme.write_text(text[:at] + wrong + text[at + len(first.group(0)) :])
    result = check(str(readme))
    assert result.returncode == 1
    assert f"{wrong!r} is in no vlpipe/models/mini/weights/vlpipe_mini.json" in result.stdout


def test_quality_figures_in_running_text_are_checked(tmp_path):
    prose = (
        "In the e2e block, t2i R@1 0.333 and recall 0.95; the band's cosine 0.78 is a setting.\n"
    )
    assert flagged(tmp_path, prose) == ["recall 0.95"]
