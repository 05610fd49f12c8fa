"""The figures of a markdown file's prose, for `python -m bench.figures`: numbers with a unit of
speed, time or memory, and ratios, outside code, generated blocks and history, each with the
results its paragraph names."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from bench.common import REPO

NUM = r"(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?"
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
    "quality": ("quality", (1.0,)),  # a model's R@k, BLEU-4 or CIDEr, in a table's column
}
#: units written after a space (a ratio's x is not: `128 x 128` is a size)
_UNIT = "|".join(sorted((re.escape(u) for u in UNITS if u not in "x×"), key=len, reverse=True))
#: a number or a range of two, then a unit (across a line break too); `224x224`, `0x1f` and
#: `v2.45` are not figures
FIGURE = re.compile(
    rf"(?<![\w.,/@#-])(?P<a>{NUM})(?:\s?(?:-|–|to)\s?(?P<b>{NUM}))?"
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
    r"|BENCHMARKS\.md#(?P<anchor>[\w-]+)|(?P<record>vlpipe_mini)\.json"
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
    names = names or {}
    original = path.read_text("utf-8").splitlines()
    lines = prose("\n".join(original))
    text = "\n".join(lines)
    found = table_figures(rel, original, lines, names)
    for m in FIGURE.finditer(text):
        number = text.count("\n", 0, m.start()) + 1
        unit = m.group("ratio") or m.group("unit")
        written = " ".join(m.group(0).split())
        cites = citations(_paragraph(original, lines, number - 1), names)
        for value in filter(None, (m.group("a"), m.group("b"))):
            found.append(Found(rel, number, written, value, unit, lines[number - 1].strip(), cites))
    for m in QUALITY.finditer(text):
        number = text.count("\n", 0, m.start()) + 1
        cites = citations(_paragraph(original, lines, number - 1), names)
        written = " ".join(m.group(0).split())
        context = lines[number - 1].strip()
        found.append(Found(rel, number, written, m.group("a"), "quality", context, cites))
    return sorted(found, key=lambda f: f.line)


#: a quality figure in running text: the number right after its metric's name ("precision
#: 0.982", "t2i R@1 0.245", "BLEU-4 0.210"); thresholds ("cosine 0.88") are settings
QUALITY = re.compile(
    r"(?<![\w-])(?:precision|recall(?:@\d+)?|R@\d+|BLEU-4|CIDEr|agreement)\s(?P<a>[01]\.\d+)(?![\w.])"
)


#: a table column whose header names a unit or a model quality metric holds figures of it
HEADER_UNIT = re.compile(
    rf"(?<![\w/@-])(?P<unit>{'|'.join(map(re.escape, _RATES))}|ms|MB|GB)(?![\w/])"
    r"|(?P<quality>R@\d+|BLEU-4|CIDEr)"
)
CELL_NUMBER = re.compile(rf"(?<![\w.@-]){NUM}(?![\w.])")


def table_figures(rel: str, original: list[str], lines: list[str], names: dict) -> list[Found]:
    """The numbers of table columns whose header names a unit (`images/s (median)`) or a quality
    metric (`t2i R@1`, `BLEU-4`): each row cites its own results or those of the paragraph that
    introduces the table."""
    found = []
    for i in range(len(lines) - 1):
        if not (_is_row(lines[i]) and re.fullmatch(r"\s*\|[-:| ]+\|\s*", lines[i + 1])):
            continue
        units = [_header_unit(cell) for cell in _cells(lines[i])]
        intro = citations(_paragraph(original, lines, i - 2), names) if i >= 2 else ()
        j = i + 2
        while j < len(lines) and _is_row(lines[j]):
            cites = tuple(sorted({*intro, *citations(original[j], names)}))
            for unit, cell in zip(units, _cells(lines[j]), strict=False):
                for m in CELL_NUMBER.finditer(cell) if unit else ():
                    value = m.group(0)
                    found.append(Found(rel, j + 1, value, value, unit, lines[j].strip(), cites))
            j += 1
    return found


def _is_row(line: str) -> bool:
    return line.lstrip().startswith("|")


def _cells(line: str) -> list[str]:
    return line.strip().strip("|").split("|")


def _header_unit(cell: str) -> str | None:
    m = HEADER_UNIT.search(cell)
    return (m.group("unit") or "quality") if m else None


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
