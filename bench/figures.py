"""Check that every speed, memory and ratio figure in the prose comes from a committed results file.

    python -m bench.figures              # check README.md, BENCHMARKS.md and docs/*.md
    python -m bench.figures FILE ...     # check other markdown files (the test plants one)

A figure is a number with a unit of speed, time or memory (`28.8 images/s`, `34 ms`, `1.3 GB`,
ranges such as `1.3-1.4 GB`, wrapped across lines too) or a ratio (`1.38x`). It is current when a
number of the same quantity in the committed results rounds to it at the precision the prose
shows: `28.8 images/s` matches 28.7958 images/s, `1.4 GB` 1,393 MB, `34 ms` 0.034 s. Which results:
- the ones its paragraph (a table row: the row) names, where it names any: `bench/results/e2e.json`,
  `python -m bench.e2e`, "the e2e block", a link to the block's BENCHMARKS.md section;
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
  `batch 32`, dates, versions), quality figures without a unit (R@1, BLEU-4), durations spelled
  out in words (`90 minutes`) and numbers in tables whose unit is only in the header;
- the entries of EXCEPTIONS: figures in the prose that are not benchmark outputs (a goal, a
  setting, arithmetic, another package's size), each with its reason.
A figure that is none of these and fails is stale: point to the BENCHMARKS.md block that holds it
(preferred: fewer figures to go stale), copy the value from its results file and name the block,
or remove it.
"""

from __future__ import annotations

import argparse
import bisect
import json
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bench.common import REPO, RESULTS
from bench.figure_exceptions import EXCEPTIONS

MODEL_RECORD = REPO / "vlpipe" / "models" / "mini" / "weights" / "vlpipe_mini.json"


_NUM = r"(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?"
_RATES = ["images/s", "image/s", "img/s", "captions/s", "queries/s", "texts/s", "rows/s",
          "photos/s", "vectors/s", "it/s"]  # fmt: skip
#: unit as written -> (quantity, factors that take a value in this unit to the quantity's base
#: unit: images/s, seconds, MB, ratio); several factors where the unit is ambiguous (MB or MiB)
UNITS: dict[str, tuple[str, tuple[float, ...]]] = {
    **{u: ("rate", (1.0,)) for u in _RATES},
    "s": ("time", (1.0,)),
    "ms": ("time", (1e-3,)),
    "us": ("time", (1e-6,)),
    "µs": ("time", (1e-6,)),
    "KB": ("memory", (1e-3, 1 / 1024)),
    "MB": ("memory", (1.0, 1.048576)),
    "MiB": ("memory", (1.048576, 1.0)),
    "GB": ("memory", (1e3, 1024.0)),
    "GiB": ("memory", (1024.0, 1073.741824, 1e3)),
    "x": ("ratio", (1.0,)),
    "×": ("ratio", (1.0,)),
}
#: units written after a space (a ratio's x is not: `128 x 128` is a size)
_UNIT = "|".join(sorted((re.escape(u) for u in UNITS if u not in "x×"), key=len, reverse=True))
#: a number or a range of two, then a unit (across a line break too); `224x224`, `0x1f` and
#: `v2.45` are not figures
FIGURE = re.compile(
    rf"(?<![\w.,/@#-])(?P<a>{_NUM})(?:\s?(?:-|–|to)\s?(?P<b>{_NUM}))?"
    rf"(?:(?P<ratio>[x×])|\s?(?P<unit>{_UNIT}))(?![\w/])"
)
BLOCK_OPEN = re.compile(r"<!--\s*(bench:[\w-]+|figures:history)\s*-->")
BLOCK_CLOSE = re.compile(r"<!--\s*/(bench:[\w-]+|figures:history)\s*-->")


@dataclass(frozen=True)
class Found:
    """A figure in the prose: where, as written, one value of it, its unit and its line."""

    path: str
    line: int
    text: str
    value: str
    unit: str
    context: str
    cites: tuple[str, ...] = ()  # the results its paragraph names; () = any results file


def default_files(repo: Path = REPO) -> list[Path]:
    return [repo / "README.md", repo / "BENCHMARKS.md", *sorted((repo / "docs").glob("*.md"))]


def prose(text: str) -> list[str]:
    """The file's lines with the generated and history blocks blanked, and code too (commands,
    flags and sample output in fenced blocks and inline code are settings and illustrations, not
    figures); line numbers stay as they were."""
    lines, inside, fenced = [], [], False
    for line in text.splitlines():
        if m := BLOCK_OPEN.fullmatch(line.strip()):
            inside.append(m.group(1))
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
            lines.append("")
            continue
        blank = inside or fenced
        lines.append("" if blank else re.sub(r"`[^`]*`", lambda c: " " * len(c.group(0)), line))
        if (m := BLOCK_CLOSE.fullmatch(line.strip())) and inside and inside[-1] == m.group(1):
            inside.pop()
    return lines


CITATION = re.compile(
    r"bench/results/(?P<file>[\w-]+)\.json|bench[.:](?P<module>\w+)|(?P<block>\w+) block\b"
    r"|BENCHMARKS\.md#(?P<anchor>[\w-]+)"
)


def citations(paragraph: str, names: dict[str, str]) -> tuple[str, ...]:
    """The results a paragraph names (`bench/results/e2e.json`, `bench.e2e`, `bench:e2e`, "the e2e
    block", a link to a BENCHMARKS.md section); `names` maps names and anchors to results."""
    cited = {names.get(next(g for g in m.groups() if g)) for m in CITATION.finditer(paragraph)}
    return tuple(sorted(c for c in cited if c))


def figures_in(path: Path, repo: Path = REPO, names: dict[str, str] | None = None) -> list[Found]:
    """The figures of a markdown file's prose; each carries the results its paragraph cites, so
    that a cited figure is held to those files' numbers only."""
    rel = path.relative_to(repo).as_posix() if path.is_relative_to(repo) else str(path)
    names = result_names() if names is None else names
    original = path.read_text("utf-8").splitlines()
    lines = prose("\n".join(original))
    text = "\n".join(lines)
    found = []
    for m in FIGURE.finditer(text):
        number = text.count("\n", 0, m.start()) + 1
        unit = m.group("ratio") or m.group("unit")
        written = " ".join(m.group(0).split())
        cites = citations(_paragraph(original, lines, number - 1), names)
        for value in filter(None, (m.group("a"), m.group("b"))):
            found.append(Found(rel, number, written, value, unit, lines[number - 1].strip(), cites))
    return found


def _paragraph(original: list[str], prose_lines: list[str], i: int) -> str:
    """The original text (inline code included) of the paragraph around line i; a table row
    stands alone (each row cites its own source)."""
    if original[i].lstrip().startswith("|"):
        return original[i]
    start, end = i, i
    while start > 0 and prose_lines[start - 1].strip():
        start -= 1
    while end + 1 < len(prose_lines) and prose_lines[end + 1].strip():
        end += 1
    return "\n".join(original[start : end + 1])


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


# -- the numbers of the results files ------------------------------------------------------------


def quantity_of_key(key: str) -> tuple[str, float] | None:
    """What a results file's key measures, from its name (`images_s`, `infer_s`, `peak_rss_mb`,
    `p95_ms`, `ratio`): (quantity, factor to its base unit), or None where the name does not say."""
    key = key.removesuffix("[]").lower()
    if key.endswith("images_s") or key.endswith("_per_s") or key == "rate":
        return "rate", 1.0
    if key.endswith("_ms") or key.startswith("ms_") or "_ms_" in key:
        return "time", 1e-3
    if key.startswith("us_") or key.endswith("_us"):
        return "time", 1e-6
    if key.endswith("_s") or key.endswith("seconds") or key.endswith("_duration"):
        return "time", 1.0
    if key.endswith("_mb") or "_mb_" in key:
        return "memory", 1.0
    if key.endswith("_gb"):
        return "memory", 1e3
    if key.endswith("bytes"):
        return "memory", 1e-6
    if key.endswith("ratio"):
        return "ratio", 1.0
    return None


def numbers_in(data: object, quantity: tuple[str, float] | None = None) -> Iterator[Known]:
    """Every number of a results record, with its quantity where the record says it: a figure's
    unit, a key's name, or the unit written after a number inside a string."""
    if isinstance(data, bool):
        return
    if isinstance(data, int | float):
        yield (quantity[0], data * quantity[1]) if quantity else ("", float(data))
    elif isinstance(data, str):
        for m in FIGURE.finditer(data):
            kind, factors = UNITS[m.group("ratio") or m.group("unit")]
            for value in filter(None, (m.group("a"), m.group("b"))):
                yield kind, float(value.replace(",", "")) * factors[0]
        for m in re.finditer(_NUM, data):
            yield "", float(m.group(0).replace(",", ""))
    elif isinstance(data, dict):
        yield from _numbers_of_dict(data, quantity)
    elif isinstance(data, list):
        for value in data:
            yield from numbers_in(value, quantity)


def _numbers_of_dict(data: dict, quantity: tuple[str, float] | None) -> Iterator[Known]:
    if "metric" in data and "vlpipe" in data and "baseline" in data:  # a figure of bench.common
        unit = UNITS.get(str(data.get("unit") or "").split(" ")[0])
        measured = (unit[0], unit[1][0]) if unit else None
        yield from numbers_in([data["vlpipe"], data["baseline"]], measured)
        yield from numbers_in(data.get("ratio"), ("ratio", 1.0))
        yield from numbers_in(re.findall(_NUM, str(data.get("goal") or "")), None)
        for value in re.findall(_NUM, str(data.get("goal") or "")):
            yield "ratio", float(value)
        yield from numbers_in(data.get("note") or "")
        return
    for key, value in data.items():
        yield from numbers_in(value, quantity_of_key(str(key)) or quantity)


Known = tuple[str, float]  # (quantity, or "" where unknown; value in the quantity's base unit)


Pools = dict[str, list[float]]  # quantity -> sorted values


def results_group(path: Path) -> str:
    """The benchmark a results file belongs to: `faces-accuracy.json` -> faces."""
    return path.stem.split("-")[0]


def known_numbers(results: Path = RESULTS, record: Path = MODEL_RECORD) -> dict[str, Pools]:
    """The numbers of the committed results files by benchmark (bench/results/e2e.json -> "e2e"),
    each sorted by quantity ("" holds the numbers whose quantity the files do not say); the
    shipped model's record and the size of its weight files count as part of every benchmark."""
    extra = list(numbers_in(json.loads(record.read_text("utf-8")))) if record.exists() else []
    for weights in sorted(record.parent.glob("*.safetensors")):  # the shipped files' sizes
        extra += [
            ("memory", weights.stat().st_size / 1e6),
            ("memory", weights.stat().st_size / 2**20),
        ]
    known: dict[str, dict[str, set[float]]] = {}
    for path in sorted(results.glob("*.json")):
        pools = known.setdefault(results_group(path), {})
        for kind, value in [*numbers_in(json.loads(path.read_text("utf-8"))), *extra]:
            pools.setdefault(kind, set()).add(value)
    return {name: {k: sorted(v) for k, v in pools.items()} for name, pools in known.items()}


def result_names(results: Path = RESULTS) -> dict[str, str]:
    """What prose may call a benchmark's results: its name, and the anchor of its BENCHMARKS.md
    section (from the title in its results file)."""
    names = {}
    for path in sorted(results.glob("*.json")):
        group = results_group(path)
        names[group] = names[path.stem] = group
        title = json.loads(path.read_text("utf-8")).get("title", "")
        names[_anchor(title)] = group
    names.pop("", None)
    return names


def _anchor(title: str) -> str:
    """GitHub's anchor of a markdown heading."""
    return re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")


def _merged(known: dict[str, Pools], names: tuple[str, ...]) -> Pools:
    merged: dict[str, set[float]] = {}
    for name in names or tuple(known):
        for kind, values in known.get(name, {}).items():
            merged.setdefault(kind, set()).update(values)
    return {kind: sorted(values) for kind, values in merged.items()}


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
    pools = [kind, ""] if significant_digits(value) >= 3 else [kind]
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
                pools[f.cites] = _merged(known, f.cites)
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
            where = " or ".join(f"bench/results/{c}*.json" for c in f.cites)
            print(f"{f.path}:{f.line}: {f.text!r} is in no {where}: {f.context}")
        else:
            print(f"{f.path}:{f.line}: {f.text!r} cites no results or is in none: {f.context}")
    print(f"bench.figures: {len(files)} files, {len(bad)} figures without a results file")
    return 1 if bad or unused else 0


if __name__ == "__main__":
    sys.exit(main())
