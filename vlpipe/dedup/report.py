"""RUN/dedup/report.html: what `vlpipe dedup` found, as one page a person can check by eye.

The counts, a histogram of each row's nearest-neighbour similarity with the threshold marked
(is the cut in a valley, or through the middle of a hump?), and the biggest clusters as rows of
thumbnails, representative first. One self-contained file: inline CSS and SVG, thumbnails as
data: URIs, no script and no outside asset, so it opens offline, from a bucket or as a mail
attachment.

Memory stays bounded at any run size: the biggest clusters are picked from clusters.parquet in
streamed batches with Arrow compute, and the parts are streamed for the few hundred rows shown
(image_id, uri, size and, when the run stored them, thumbnails). Every string from the data is
HTML-escaped: a uri may hold anything.
"""

from __future__ import annotations

import base64
import logging
import posixpath
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from html import escape

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from vlpipe.dedup.output import read_summary
from vlpipe.errors import VlpipeError
from vlpipe.images.thumbnails import ThumbnailError, thumbnail_jpeg
from vlpipe.reading.sources import read_source
from vlpipe.rundir import CLUSTERS, DEDUP, RunDir, write_atomic

log = logging.getLogger(__name__)

REPORT = "report.html"
MAX_SOURCE_BYTES = 64 * 2**20
CLUSTER_BATCH = 262_144  # clusters.parquet rows read at a time
PART_BATCH = 65_536  # part rows read at a time without thumbnails...
THUMB_BATCH = 2_048  # ...and with them (a few KB each)
READERS = 8  # sources read at once (remote ones are slow, not heavy)
MEMBER_COLUMNS = ["image_id", "cluster_id", "is_representative", "cluster_size", "similarity",
                  "method"]  # fmt: skip


@dataclass
class Member:
    image_id: str
    is_representative: bool
    similarity: float | None
    method: str | None
    uri: str | None = None
    width: int | None = None
    height: int | None = None
    stored: bytes | None = None  # the run's own thumbnail (--save-thumbnails)
    thumb: bytes | None = None  # the JPEG shown
    problem: str | None = None  # why there is no thumbnail


@dataclass
class Cluster:
    cluster_id: str
    size: int
    members: list[Member] = field(default_factory=list)


def write_report(
    run_dir: str, max_clusters: int = 24, per_cluster: int = 8, thumb_px: int = 128
) -> str:
    """Write RUN_DIR/dedup/report.html (atomically, on the run's filesystem); returns where."""
    run = RunDir(run_dir)
    summary = read_summary(run)
    if summary is None:
        raise VlpipeError(f"no dedup output in {run_dir}: run `vlpipe dedup {run_dir}` first")
    clusters = biggest_clusters(run, max_clusters, per_cluster)
    members = {m.image_id: m for c in clusters for m in c.members}
    fill_rows(run, members)
    make_thumbnails(list(members.values()), thumb_px)
    page = render(summary, clusters, run_dir, thumb_px)
    write_atomic(run.fs, run.join(DEDUP, REPORT), page.encode("utf-8"))
    return run.url(DEDUP, REPORT) if "://" in run_dir else run.join(DEDUP, REPORT)


# ---- picking what to show ---------------------------------------------------------------------


def biggest_clusters(run: RunDir, max_clusters: int, per_cluster: int) -> list[Cluster]:
    """The `max_clusters` biggest clusters (size, then cluster_id), each with its representative
    and up to `per_cluster - 1` other members (most similar first). Two streamed passes."""
    path = run.join(CLUSTERS)
    if max_clusters < 1 or not run.fs.exists(path):
        return []
    sizes = [("cluster_size", "descending"), ("cluster_id", "ascending")]
    top = None
    for batch in _batches(run, path, ["cluster_id", "cluster_size", "is_representative"]):
        keep = pc.and_(batch.column(2), pc.greater(batch.column(1), 1))
        reps = pa.Table.from_batches([batch.filter(keep)]).select([0, 1])
        if reps.num_rows == 0:  # (select_k of no rows fails)
            continue
        top = reps if top is None else pa.concat_tables([top, reps])
        top = top.take(pc.select_k_unstable(top, max_clusters, sizes))
    if top is None or top.num_rows == 0:
        return []
    top = top.sort_by(sizes)
    wanted = top.column("cluster_id").combine_chunks()
    picked = None
    for batch in _batches(run, path, MEMBER_COLUMNS):
        rows = pa.Table.from_batches([batch.filter(pc.is_in(batch.column(1), value_set=wanted))])
        picked = rows if picked is None else pa.concat_tables([picked, rows])
        picked = first_per_cluster(picked, per_cluster)
    clusters = {
        cid: Cluster(cid, size)
        for cid, size in zip(
            wanted.to_pylist(), top.column("cluster_size").to_pylist(), strict=True
        )
    }
    for row in picked.to_pylist():  # at most max_clusters * per_cluster rows
        clusters[row["cluster_id"]].members.append(
            Member(row["image_id"], row["is_representative"], row["similarity"], row["method"])
        )
    return list(clusters.values())


def first_per_cluster(table: pa.Table, n: int) -> pa.Table:
    """Each cluster's first `n` rows: the representative, then by similarity (Arrow sort and a
    vectorised rank within each cluster, so a cluster of millions costs no Python loop)."""
    table = table.sort_by(
        [
            ("cluster_id", "ascending"),
            ("is_representative", "descending"),
            ("similarity", "descending"),
            ("image_id", "ascending"),
        ]
    ).combine_chunks()
    rows = table.num_rows
    if rows == 0:
        return table
    cid = table.column("cluster_id")
    change = np.ones(rows, bool)
    change[1:] = pc.not_equal(cid.slice(1), cid.slice(0, rows - 1)).to_numpy(zero_copy_only=False)
    starts = np.flatnonzero(change)
    rank = np.arange(rows) - starts[np.cumsum(change) - 1]
    return table.filter(pa.array(rank < n))


def _batches(run: RunDir, path: str, columns: list[str]):
    with run.fs.open(path, "rb") as f:
        yield from pq.ParquetFile(f).iter_batches(batch_size=CLUSTER_BATCH, columns=columns)


def fill_rows(run: RunDir, members: dict[str, Member]) -> None:
    """uri, size and stored thumbnail of each member, from one streamed pass over the parts that
    stops once every member is found; only matching rows are kept (`pc.is_in`)."""
    if not members:
        return
    wanted = pa.array(list(members), pa.string())
    missing = set(members)
    for path in run.parts():
        pf = run.open_part(path)
        if pf is None:
            continue
        names = set(pf.schema_arrow.names)
        size = ["orig_width", "orig_height"] if "orig_width" in names else ["width", "height"]
        columns = ["image_id", "uri", *[c for c in size if c in names]]
        thumbs = "thumbnail" in names
        columns += ["thumbnail"] if thumbs else []
        for batch in run.iter_part_batches(path, columns, THUMB_BATCH if thumbs else PART_BATCH):
            hit = batch.filter(pc.is_in(batch.column(0), value_set=wanted))
            for row in hit.to_pylist():
                m = members[row["image_id"]]
                m.uri = row["uri"]
                m.width, m.height = row.get(size[0]), row.get(size[1])
                m.stored = row.get("thumbnail")
                missing.discard(m.image_id)
            if not missing:
                return


def make_thumbnails(members: list[Member], px: int) -> None:
    """The stored thumbnail when the run kept one, else one made from the source; a source that
    cannot be read leaves the reason in `problem` instead."""
    with ThreadPoolExecutor(READERS) as pool:
        list(pool.map(lambda m: _thumbnail(m, px), members))


def _thumbnail(m: Member, px: int) -> None:
    if m.uri is None:
        m.problem = "not in the run's parts"
        return
    if m.stored:
        try:
            m.thumb = thumbnail_jpeg(m.stored, px)
            return
        except ThumbnailError:
            pass  # a damaged stored thumbnail: try the source
    try:
        m.thumb = thumbnail_jpeg(read_source(m.uri, MAX_SOURCE_BYTES), px)
    except ThumbnailError as exc:
        m.problem = str(exc)
    except Exception as exc:  # noqa: BLE001 - one bad image never costs the report
        log.warning("no thumbnail of %s: %s", m.uri, exc)
        m.problem = f"no preview: {type(exc).__name__}"


# ---- the page ---------------------------------------------------------------------------------

CSS = """
body { margin: 0; padding: 20px 28px 40px; font: 14px/1.45 system-ui, -apple-system, "Segoe UI",
       sans-serif; color: #1d232b; background: #f6f7f9; }
h1 { font-size: 20px; margin: 0 0 4px; } h2 { font-size: 16px; margin: 28px 0 10px; }
.sub { color: #65707d; margin: 0 0 16px; overflow-wrap: anywhere; }
.stats { display: flex; flex-wrap: wrap; gap: 10px; margin: 0; }
.stat { background: #fff; border: 1px solid #d8dde3; border-radius: 8px; padding: 8px 14px; }
.stat dt { color: #65707d; font-size: 12px; } .stat dd { margin: 0; font-size: 18px; }
.rule { margin: 12px 0 0; color: #3b4450; }
svg { background: #fff; border: 1px solid #d8dde3; border-radius: 8px; }
svg .bar { fill: #5b8def; } svg .over { fill: #d9534f; }
svg .axis { stroke: #8a939e; } svg text { font-size: 11px; fill: #3b4450; }
svg .threshold { stroke: #b3261e; stroke-width: 2; stroke-dasharray: 5 3; }
svg .threshold-label { fill: #b3261e; font-weight: 600; }
.cluster { background: #fff; border: 1px solid #d8dde3; border-radius: 8px; padding: 10px 12px;
           margin-bottom: 14px; }
.cluster h3 { font-size: 14px; margin: 0 0 8px; font-weight: 600; }
.cluster h3 span { color: #65707d; font-weight: 400; }
.members { display: flex; flex-wrap: wrap; gap: 10px; align-items: flex-start; }
figure { margin: 0; width: {px}px; font-size: 11px; color: #3b4450; }
figure .box { width: {px}px; height: {px}px; display: grid; place-items: center;
              background: #e9ecef; border-radius: 6px; overflow: hidden;
              border: 2px solid #e9ecef; }
figure img { max-width: 100%; max-height: 100%; display: block; }
figure.rep .box { border-color: #2e7d32; }
.badge { display: inline-block; background: #2e7d32; color: #fff; border-radius: 4px;
         padding: 0 5px; font-size: 10px; margin-bottom: 2px; }
.missing { color: #8a3b12; padding: 6px; text-align: center; overflow-wrap: anywhere; }
figcaption div { overflow-wrap: anywhere; } .name { font-weight: 600; }
.more { align-self: center; color: #65707d; }
.empty { background: #fff; border: 1px solid #d8dde3; border-radius: 8px; padding: 14px; }
"""


def render(summary: dict, clusters: list[Cluster], run_dir: str, px: int) -> str:
    """The whole page; every value from the data goes through `escape`."""
    made = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    css = CSS.replace("{px}", str(int(px)))
    parts = [
        '<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>vlpipe dedup report: {escape(run_dir)}</title>\n<style>{css}</style>\n"
        "</head>\n<body>\n<h1>Near-duplicates</h1>\n"
        f'<p class="sub">{escape(run_dir)} &middot; report made {made} &middot; dedup took '
        f"{_num(summary.get('seconds'))} s ({escape(str(summary.get('run', '')))})</p>\n",
        _stats(summary),
        "<h2>Nearest-neighbour similarity</h2>\n",
        histogram_svg(summary),
        f"<h2>Biggest clusters ({len(clusters)} of {_num(summary.get('clusters'))})</h2>\n"
        '<p class="sub">Representative (kept) first. sim: '
        f"{escape(str(summary.get('histogram_of', 'similarity')))} to the nearest other image; "
        "then how the image joined its cluster.</p>\n",
    ]
    if not clusters:
        parts.append(
            '<p class="empty">No duplicates found: every image stands alone under these '
            "thresholds.</p>\n"
        )
    parts += [_cluster(c) for c in clusters]
    parts.append("</body>\n</html>\n")
    return "".join(parts)


def _stats(s: dict) -> str:
    by = s.get("by_method") or {}
    items = [
        ("images", s.get("images")), ("duplicates", s.get("duplicates")),
        ("kept", s.get("kept")), ("clusters", s.get("clusters")),
        ("largest cluster", s.get("largest_cluster")),
        *((f"by {m}", by.get(m, 0)) for m in ("sha256", "phash", "embedding")),
    ]  # fmt: skip
    cells = "".join(
        f'<div class="stat" data-stat="{escape(k)}"><dt>{escape(k)}</dt><dd>{_num(v)}</dd></div>'
        for k, v in items
    )
    return f'<dl class="stats">{cells}</dl>\n<p class="rule">{escape(rule(s))}</p>\n'


def rule(s: dict, short: bool = False) -> str:
    """What counted as a duplicate, in words (`short`: the CLI's summary line)."""
    threshold, distance = s.get("threshold"), s.get("phash_distance")
    cos = f"cosine >= {threshold}" if short else f"embedding cosine >= {threshold}"
    bits = f"phash <= {distance} bits" if short else f"phash differs in <= {distance} of 64 bits"
    both = f"{cos} or {bits}"
    if s.get("near_threshold") is not None:  # the verified band (summaries from before: none)
        both += (f" or (cosine >= {s['near_threshold']} among the 16 nearest and phash"
                 f" <= {s['near_phash_distance']} bits)")  # fmt: skip
    how = {"embedding": cos, "phash": bits, "both": both}.get(s.get("method"), str(s.get("method")))
    if short:
        return how
    return f"method {s.get('method')}: {how}; identical bytes (sha256) always"


def threshold_of(s: dict) -> float:
    """The cut on the histogram's axis: the cosine, or the phash distance as a similarity."""
    if str(s.get("histogram_of", "")).startswith("embedding"):
        return float(s.get("threshold", 0.0))
    return 1.0 - float(s.get("phash_distance", 0)) / 64


def histogram_svg(s: dict, width: int = 720, height: int = 220) -> str:
    """Bars (height by the square root of the count, so the few duplicates next to the bulk of
    distinct rows still show), the axis, and the threshold as a labelled dashed line."""
    hist = s.get("histogram") or {}
    edges, counts = hist.get("edges") or [], hist.get("counts") or []
    left, right, top, bottom = 40, 16, 24, 36
    w, h = width - left - right, height - top - bottom
    cut = min(max(threshold_of(s), 0.0), 1.0)
    peak = max([1, *counts]) ** 0.5
    out = [
        f'<svg width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="histogram of nearest-neighbour '
        f'similarity">'
    ]
    for i, c in enumerate(counts[: max(0, len(edges) - 1)]):
        x0, x1 = left + edges[i] * w, left + edges[i + 1] * w
        bh = (c**0.5) / peak * h if c else 0.0
        cls = "bar over" if edges[i] >= cut - 1e-9 else "bar"
        out.append(
            f'<rect class="{cls}" x="{x0 + 0.5:.1f}" y="{top + h - bh:.1f}" '
            f'width="{max(x1 - x0 - 1, 0.5):.1f}" height="{bh:.1f}"><title>'
            f"{edges[i]:.2f}-{edges[i + 1]:.2f}: {int(c)} rows</title></rect>"
        )
    out.append(f'<line class="axis" x1="{left}" y1="{top + h}" x2="{left + w}" y2="{top + h}"/>')
    for t in (0, 0.25, 0.5, 0.75, 1.0):
        x = left + t * w
        out.append(f'<text x="{x:.1f}" y="{top + h + 14}" text-anchor="middle">{t:g}</text>')
    xc = left + cut * w
    anchor = "end" if cut > 0.8 else "start"
    dx = -4 if anchor == "end" else 4
    out += [
        f'<line class="threshold" x1="{xc:.1f}" y1="{top - 8}" x2="{xc:.1f}" y2="{top + h}"/>',
        f'<text class="threshold-label" x="{xc + dx:.1f}" y="{top - 10}" '
        f'text-anchor="{anchor}">threshold {cut:.3g}</text>',
        f'<text x="{left + w / 2:.1f}" y="{height - 6}" text-anchor="middle">'
        f"{escape(str(s.get('histogram_of', 'similarity')))} of each row's nearest neighbour "
        f"(bar height: &#8730;rows, max {max([0, *counts])})</text>",
        "</svg>\n",
    ]
    return "".join(out)


def _cluster(c: Cluster) -> str:
    rep = next((m for m in c.members if m.is_representative), None)
    name = escape(file_name(rep.uri)) if rep is not None and rep.uri else escape(c.cluster_id)
    figures = "".join(_figure(m) for m in c.members)
    more = c.size - len(c.members)
    if more > 0:
        figures += f'<div class="more">+{more} more</div>'
    return (
        f'<section class="cluster" data-cluster="{escape(c.cluster_id)}">'
        f"<h3>{c.size} images <span>&middot; kept: {name}</span></h3>"
        f'<div class="members">{figures}</div></section>\n'
    )


def _figure(m: Member) -> str:
    if m.thumb is not None:
        data = base64.b64encode(m.thumb).decode("ascii")
        box = f'<img src="data:image/jpeg;base64,{data}" alt="{escape(file_name(m.uri))}">'
    else:
        box = f'<div class="missing">no preview<br>{escape(m.problem or "")}</div>'
    size = f"{m.width}&times;{m.height}" if m.width and m.height else "size unknown"
    sim = f"sim {m.similarity:.3f}" if m.similarity is not None else "sim &ndash;"
    how = escape(m.method) if m.method else "&ndash;"
    badge = '<span class="badge">representative</span>' if m.is_representative else ""
    title = escape(m.uri or m.image_id)
    return (
        f'<figure class="{"rep" if m.is_representative else "dup"}" title="{title}">'
        f'<div class="box">{box}</div><figcaption>{badge}'
        f'<div class="name">{escape(file_name(m.uri) if m.uri else m.image_id)}</div>'
        f"<div>{size} &middot; {sim} &middot; {how}</div></figcaption></figure>"
    )


def file_name(uri: str | None) -> str:
    """The last part of a uri: a file's name, or a tar member's (`<tar>#<dir>/<name>`)."""
    if not uri:
        return ""
    return posixpath.basename(uri.rstrip("/")) or uri


def _num(v) -> str:
    return escape(f"{v:,}" if isinstance(v, int) else str(v if v is not None else "-"))
