"""Check that every speed, memory and ratio figure in the prose comes from a committed results file.

    python -m bench.figures              # check README.md, BENCHMARKS.md and docs/*.md
    python -m bench.figures FILE ...     # check other markdown files (the test plants one)

A figure is a number with a unit of speed, time or memory (`28.8 images/s`, `34 ms`, `1.3 GB`,
ranges such as `1.3-1.4 GB`, wrapped across lines too), a ratio (`1.38x`), a number in a table
column whose header names such a unit (`images/s (median)`) or a quality metric (`t2i R@1`,
`BLEU-4`, `CIDEr`), or the number right after a quality metric's name in running text
(`precision 0.982`, `R@1 0.245`); quality figures match only the results' quality numbers
(`t2i_r1`, `bleu4`, `precision`, `recall_crop`, ...). It is current when a
number of the same quantity in the committed results rounds to it at the precision the prose
shows: `28.8 images/s` matches 28.7958 images/s, `1.4 GB` 1,393 MB, `34 ms` 0.034 s. Which results:
- the ones its paragraph (a table row: the row and the paragraph above the table) names, where it
  names any: `bench/results/e2e.json`, `python -m bench.e2e`, "the e2e block", a link to the
  block's BENCHMARKS.md section, or `vlpipe_mini.json` (the shipped model's record alone: its
  `dev_metrics`);
- otherwise any bench/results/*.json, but then a figure of fewer than 3 significant digits
  (`2.1x`, `0.8-1.0 GB`) fails: among all the files' numbers, one that rounds to it is nearly
  always there by chance, so a short figure must name its source.
The shipped model's record (vlpipe/models/mini/weights/vlpipe_mini.json) and the sizes of its
weight files count as part of every benchmark's results. A figure's quantity in the results comes
from a figure's unit, a key's name (`images_s`, `infer_s`, `peak_rss_mb`, `p95_ms`, `ratio`) or a
unit written in a string. Every figure that fails is printed with file:line and its line, and the
exit status is 1.

Policy (what is not checked, and why):
- the generated `<!-- bench:NAME -->` blocks of BENCHMARKS.md: bench.report renders them from the
  results files, so they are current by construction;
- text between `<!-- figures:history -->` and `<!-- /figures:history -->`: dated history (earlier
  training rounds, superseded runs, the runs that made a change) that says so in its own words;
  it is not a claim about the shipped code, and nothing else may go there;
- code (fenced blocks and inline code): commands, flags and sample output;
- counts, sizes and settings without a unit of speed, memory or ratio (`2 cores`, `224 px`,
  `batch 32`, dates, versions), thresholds (`cosine 0.88`), quality figures not right after their
  metric's name (`0.244 / 0.687`), durations spelled out in words (`90 minutes`);
- the entries of bench/figure_exceptions.py: figures in the prose that are not benchmark outputs
  (a goal, a setting, arithmetic, another package's size), each with its reason; an entry that
  excuses no figure any more fails the check too.
A figure that is none of these and fails is stale: point to the BENCHMARKS.md block that holds it
(preferred: fewer figures to go stale), copy the value from its results file and name the block,
or remove it.
"""

from __future__ import annotations

import argparse
import bisect
import sys
from pathlib import Path

from bench.common import REPO, RESULTS
from bench.figure_exceptions import EXCEPTIONS
from bench.figure_prose import UNITS, Found, default_files, figures_in
from bench.figure_results import (
    MODEL_RECORD,
    RECORD,
    Pools,
    known_numbers,
    merged,
    result_names,
)


def excused(figure: Found, exceptions: list[tuple[str, str, str]] = EXCEPTIONS) -> bool:
    """Whether an EXCEPTIONS entry names this figure: same file, its text on the figure's line
    and the figure inside that text."""
    return any(
        path == figure.path and text in figure.context and figure.text in text
        for path, text, _reason in exceptions
    )


def unused_exceptions(
    files: list[Path], exceptions: list[tuple[str, str, str]] = EXCEPTIONS
) -> list[tuple[str, str, str]]:
    """The EXCEPTIONS entries that excuse no figure of `files` any more (the prose changed)."""
    found = [f for path in files for f in figures_in(path, REPO, {})]
    return [e for e in exceptions if not any(excused(f, [e]) for f in found)]


#: figures with fewer significant digits than this must cite their results
SHORT = 3


def significant_digits(value: str) -> int:
    return len(value.replace(",", "").replace(".", "").lstrip("0"))


def matches(value: str, unit: str, known: dict[str, list[float]]) -> bool:
    """Whether a known number of the figure's quantity rounds to `value` as written (`28.8`:
    28.75 up to 28.85). A figure of 3 significant digits or more may also match a number whose
    quantity the files do not say; a shorter one (`2x`, `24 images/s`) needs its own quantity,
    or almost any file would hold a match."""
    written = float(value.replace(",", ""))
    decimals = len(value.split(".")[1]) if "." in value else 0
    half = 0.5 * 10**-decimals + 1e-9
    kind, factors = UNITS[unit]
    untyped_ok = significant_digits(value) >= SHORT and kind != "quality"
    pools = [kind, ""] if untyped_ok else [kind]
    for pool in pools:
        for factor in factors if pool else (1.0,):
            if _any_between(
                known.get(pool, []), (written - half) * factor, (written + half) * factor
            ):
                return True
    return False


def _any_between(values: list[float], low: float, high: float) -> bool:
    i = bisect.bisect_left(values, low)
    return i < len(values) and values[i] <= high


def stale(files: list[Path], repo: Path = REPO, results: Path = RESULTS) -> list[Found]:
    """The figures of `files` that no exception excuses and no results file holds: the files
    their paragraph cites, where it cites any. A figure of fewer than 3 significant digits
    (`2.1x`, `0.8 GB`) must cite one: among all the files' numbers, one that rounds to it is
    nearly always there by chance."""
    known, names = known_numbers(results), result_names(results)
    pools: dict[tuple[str, ...], Pools] = {}
    bad = []
    for path in files:
        for f in figures_in(path, repo, names):
            if f.cites not in pools:
                pools[f.cites] = merged(known, f.cites)
            if excused(f):
                continue
            if not matches(f.value, f.unit, pools[f.cites]) or (
                not f.cites and significant_digits(f.value) < SHORT
            ):
                bad.append(f)
    return bad


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.figures", description=__doc__.split("\n")[0]
    )
    parser.add_argument("files", nargs="*", type=Path, help="markdown files (default: the docs)")
    parser.add_argument("--results", type=Path, default=RESULTS, help="results folder")
    args = parser.parse_args(argv)
    files = [p.resolve() for p in args.files] or default_files()
    missing = [p for p in [*files, args.results] if not p.exists()]
    if missing:
        print(f"bench.figures: no such file or folder: {missing[0]}", file=sys.stderr)
        return 2
    bad = stale(files, results=args.results)
    unused = unused_exceptions(files) if not args.files else []
    for path, text, _reason in unused:
        print(f"{path}: exception {text!r} (bench/figure_exceptions.py) excuses no figure any more")
    for f in bad:
        if f.cites:
            where = " or ".join(
                MODEL_RECORD.relative_to(REPO).as_posix()
                if c == RECORD
                else f"bench/results/{c}*.json"
                for c in f.cites
            )
            print(f"{f.path}:{f.line}: {f.text!r} is in no {where}: {f.context}")
        else:
            print(f"{f.path}:{f.line}: {f.text!r} cites no results or is in none: {f.context}")
    print(f"bench.figures: {len(files)} files, {len(bad)} figures without a results file")
    return 1 if bad or unused else 0


if __name__ == "__main__":
    sys.exit(main())
