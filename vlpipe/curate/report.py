"""SUBSET/report.html: what `vlpipe curate` kept and why, as one page a person can check by eye.

Rows removed per rule (alone, and in the order the rules apply), by dedup, and unreadable; a
histogram of every quality signal and score over the whole run with each rule's cut on it marked;
and thumbnails of the rows just above and just below each cut (is the cut where the images turn
bad?). One self-contained file: inline CSS and SVG, thumbnails as data: URIs, no script, no
outside asset, so it opens offline.

Bounded memory: histograms have fixed bins (a signal's documented range, a score's range from the
parts' footer statistics) and each cut keeps its K nearest rows on each side as the rows stream.
"""

from __future__ import annotations

import base64
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from html import escape

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from vlpipe.search.where import tokenize

REPORT = "report.html"
BINS = 40
NEAR = 4  # thumbnails on each side of a cut
THUMB_PX = 112
#: a signal's axis: (low, high, log10(1 + x) axis); grayscale is a two-bar chart
RANGES = {
    "sharpness": (0.0, 4.5, True),
    "brightness": (0.0, 1.0, False),
    "contrast": (0.0, 0.5, False),
    "colorfulness": (0.0, 1.2, False),
    "entropy": (0.0, 8.0, False),
    "border": (0.0, 1.0, False),
    "grayscale": (0.0, 1.0, False),
}


@dataclass(frozen=True)
class Cut:
    rule: int  # which --where
    column: str
    op: str
    value: float


def cuts_of(rules: list, numeric: set[str]) -> list[Cut]:
    """`column OP number` comparisons (and BETWEEN's two ends) of each rule on numeric columns."""
    out = []
    for i, rule in enumerate(rules):
        tokens = tokenize(rule.text)
        for a, b, c in zip(tokens, tokens[1:], tokens[2:], strict=False):
            if a.kind == "name" and a.text in numeric and b.kind == "op" and c.kind == "number":
                out.append(Cut(i, a.text, b.text, float(c.text)))
        for j, t in enumerate(tokens[:-4]):
            if t.kind == "name" and t.text in numeric and tokens[j + 1].is_word("between"):
                lo, hi = tokens[j + 2], tokens[j + 4]
                if lo.kind == hi.kind == "number":
                    out += [
                        Cut(i, t.text, ">=", float(lo.text)),
                        Cut(i, t.text, "<=", float(hi.text)),
                    ]
    return out


@dataclass
class Histogram:
    column: str
    low: float
    high: float
    log: bool
    counts: np.ndarray = field(default_factory=lambda: np.zeros(BINS, np.int64))
    nulls: int = 0

    def axis(self, v: np.ndarray) -> np.ndarray:
        return np.log10(1 + np.maximum(v, 0)) if self.log else v

    def add(self, values: np.ndarray) -> None:
        finite = np.isfinite(values)
        self.nulls += int((~finite).sum())
        v = np.clip(self.axis(values[finite]), self.low, self.high)
        self.counts += np.histogram(v, bins=BINS, range=(self.low, self.high))[0]


@dataclass
class Near:
    """The K rows closest to a cut on each side, kept as the rows stream by."""

    cut: Cut
    below: list = field(default_factory=list)  # (distance, value, uri)
    above: list = field(default_factory=list)

    def add(self, values: np.ndarray, uris: pa.Array) -> None:
        for side, mask in (("below", values < self.cut.value), ("above", values >= self.cut.value)):
            rows = np.flatnonzero(mask & np.isfinite(values))
            if not len(rows):
                continue
            d = np.abs(values[rows] - self.cut.value)
            best = rows[np.argsort(d, kind="stable")[:NEAR]]
            found = [(abs(float(values[r]) - self.cut.value), float(values[r]), uris[r].as_py())
                     for r in best]  # fmt: skip
            setattr(self, side, sorted(getattr(self, side) + found)[:NEAR])


class ReportData:
    """Everything the page shows, accumulated batch by batch over all of the run's rows."""

    def __init__(self, rules: list, columns: list[str], ranges: dict[str, tuple[float, float]]):
        self.rules = rules
        self.histograms = {}
        for c in columns:
            low, high, log = RANGES.get(c, (*ranges.get(c, (0.0, 1.0)), False))
            self.histograms[c] = Histogram(c, low, high if high > low else low + 1, log)
        self.near = [Near(cut) for cut in cuts_of(rules, set(columns))]

    def add(self, table: pa.Table) -> None:
        for name, h in self.histograms.items():
            h.add(_floats(table.column(name)))
        for n in self.near:
            n.add(_floats(table.column(n.cut.column)), table.column("uri"))


def _floats(column) -> np.ndarray:
    if pa.types.is_boolean(column.type):
        column = pc.cast(column, pa.float64())
    return np.asarray(pc.fill_null(pc.cast(column, pa.float64()), np.nan).to_numpy(), np.float64)


def shown_uris(data: ReportData) -> list[str]:
    """The uris of the rows the page shows near a cut."""
    return sorted({u for n in data.near for _, _, u in n.below + n.above})


def thumbnails(data: ReportData, read) -> dict[str, str]:
    """uri -> data: URI of a small JPEG (or an error text) for every row shown near a cut."""
    uris = shown_uris(data)

    def one(uri: str) -> tuple[str, str]:
        try:
            jpeg = read(uri, THUMB_PX)
            return uri, "data:image/jpeg;base64," + base64.b64encode(jpeg).decode()
        except Exception as exc:  # noqa: BLE001 - one unreadable source never costs the report
            return uri, f"! {type(exc).__name__}"

    with ThreadPoolExecutor(8) as pool:
        return dict(pool.map(one, uris))


CSS = """
body { margin: 0; padding: 20px 28px 40px; font: 14px/1.45 system-ui, sans-serif;
       color: #1d232b; background: #f6f7f9; }
h1 { font-size: 20px; margin: 0 0 4px; } h2 { font-size: 16px; margin: 26px 0 10px; }
.sub { color: #65707d; margin: 0 0 14px; overflow-wrap: anywhere; }
table { border-collapse: collapse; background: #fff; } td, th { border: 1px solid #d8dde3;
        padding: 4px 10px; text-align: left; } td.n { text-align: right; }
svg { background: #fff; border: 1px solid #d8dde3; border-radius: 8px; }
svg .bar { fill: #5b8def; } svg text { font-size: 11px; fill: #3b4450; }
svg .cut { stroke: #b3261e; stroke-width: 2; stroke-dasharray: 5 3; }
svg .cut-label { fill: #b3261e; font-weight: 600; }
.hists { display: flex; flex-wrap: wrap; gap: 12px; }
.near { background: #fff; border: 1px solid #d8dde3; border-radius: 8px; padding: 10px 12px;
        margin-bottom: 12px; } .near h3 { font-size: 14px; margin: 0 0 8px; }
.side { display: flex; flex-wrap: wrap; gap: 8px; align-items: flex-start; margin-bottom: 6px; }
.side > b { width: 110px; } figure { margin: 0; width: 112px; font-size: 11px; }
figure .box { width: 112px; height: 112px; display: grid; place-items: center;
              background: #e9ecef; border-radius: 6px; overflow: hidden; }
figure img { max-width: 100%; max-height: 100%; } .missing { color: #8a3b12; padding: 4px; }
"""


def render(run_dir: str, to: str, fmt: str, sel, data: ReportData, thumbs: dict, extra) -> str:
    made = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts = [
        '<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>vlpipe curate report: {escape(to)}</title>\n<style>{CSS}</style>\n</head>\n"
        f"<body>\n<h1>Curated subset</h1>\n<p class=\"sub\">{escape(run_dir)} &rarr; "
        f"{escape(to)} ({escape(fmt)}) &middot; made {made}</p>\n",
        _counts(sel, extra),
        "<h2>Signals and scores over the whole run</h2>\n<div class=\"hists\">\n",
        *(_histogram(h, [n.cut for n in data.near if n.cut.column == c])
          for c, h in data.histograms.items()),
        "</div>\n<h2>Just below and just above each cut</h2>\n",
    ]  # fmt: skip
    if not data.near:
        parts.append('<p class="sub">No rule compares a signal or score with a number.</p>\n')
    parts += [_near(n, sel.rules[n.cut.rule].text, thumbs) for n in data.near]
    parts.append("</body>\n</html>\n")
    return "".join(parts)


def _counts(sel, extra: dict) -> str:
    rows = [("rows in the run", sel.seen, "")]
    for i, rule in enumerate(sel.rules):
        rows.append((f"--where {rule.text}", sel.removed[i], f"{sel.failing[i]:,} fail it alone"))
    if extra.get("dedup"):
        rows.append(("--dedup (another row of its cluster kept)", sel.duplicates, ""))
    if extra.get("unreadable"):
        rows.append(("source unreadable (not written)", extra["unreadable"], ""))
    rows.append(("rows written", extra.get("written", sel.kept), ""))
    if extra.get("with_location") is not None:
        rows.append(("of them holding a location (exif_gps)", extra["with_location"],
                     "" if extra.get("keep_metadata") or extra.get("format") != "webdataset"
                     else "stripped from the exported bytes"))  # fmt: skip
    if extra.get("with_faces") is not None:
        rows.append(("of them showing faces", extra["with_faces"],
                     "blurred" if extra.get("blur_faces") else ""))  # fmt: skip
    body = "".join(
        f'<tr data-rule="{i}"><td>{escape(a)}</td><td class="n">{b:,}</td><td>{escape(c)}</td></tr>'
        for i, (a, b, c) in enumerate(rows)
    )
    return f"<table><tr><th>step</th><th>rows removed</th><th></th></tr>{body}</table>\n"


def _histogram(h: Histogram, cuts: list[Cut]) -> str:
    width, height, pad = 360, 150, 24
    top = max(int(h.counts.max()), 1)
    bw, tall = (width - 2 * pad) / BINS, height - 2 * pad
    bars = "".join(
        f'<rect class="bar" x="{pad + i * bw:.1f}" y="{height - pad - c / top * tall:.1f}"'
        f' width="{max(bw - 1, 1):.1f}" height="{c / top * tall:.1f}"/>'
        for i, c in enumerate(h.counts)
    )
    lines = ""
    for cut in cuts:
        at = float(h.axis(np.array([cut.value]))[0])
        x = pad + (min(max(at, h.low), h.high) - h.low) / (h.high - h.low) * (width - 2 * pad)
        lines += (f'<line class="cut" x1="{x:.1f}" x2="{x:.1f}" y1="{pad - 8}"'
                  f' y2="{height - pad}"/>'
                  f'<text class="cut-label" x="{x + 3:.1f}" y="{pad - 10}">{escape(cut.op)} '
                  f"{cut.value:.4g}</text>")  # fmt: skip
    scale = " (log10 1+x)" if h.log else ""
    label = (f'<text x="{pad}" y="{height - 6}">{h.low:.3g}</text><text x="{width - pad - 30}"'
             f' y="{height - 6}">{h.high:.3g}</text>')  # fmt: skip
    return (
        f'<figure class="hist" data-column="{escape(h.column)}" style="width:{width}px">'
        f'<svg width="{width}" height="{height}" role="img">{bars}{lines}{label}</svg>'
        f"<figcaption>{escape(h.column)}{scale}; {h.nulls:,} null</figcaption></figure>\n"
    )


def _near(n: Near, rule: str, thumbs: dict) -> str:
    def fig(value: float, uri: str) -> str:
        src = thumbs.get(uri, "")
        box = (f'<img src="{src}" alt="">' if src.startswith("data:")
               else f'<div class="missing">{escape(src or "no preview")}</div>')  # fmt: skip
        name = uri.rsplit("/", 1)[-1]
        return (f'<figure><div class="box">{box}</div><figcaption>{value:.4g}<br>'
                f"{escape(name)}</figcaption></figure>")  # fmt: skip

    sides = "".join(
        f'<div class="side" data-side="{side}"><b>{side} {n.cut.value:.4g}</b>'
        + "".join(fig(v, u) for _, v, u in rows)
        + "</div>"
        for side, rows in (("below", sorted(n.below, key=lambda r: r[1])),
                           ("above", sorted(n.above, key=lambda r: r[1])))
    )  # fmt: skip
    title = f"{n.cut.column} {n.cut.op} {n.cut.value:.4g}"
    head = f'<h3>{escape(title)} <span class="sub">(--where {escape(rule)})</span></h3>'
    return f'<section class="near" data-column="{escape(n.cut.column)}">{head}{sides}</section>\n'
