"""`vlpipe curate OUT --to SUBSET`: the rows of a run that pass every `--where` rule (and with
`--dedup`, one per near-duplicate cluster) as a Parquet manifest or WebDataset shards, plus
SUBSET/report.html and SUBSET/curate.json.

Everything the user can get wrong (a rule, an older run without the signals a rule names, a
SUBSET that already holds a subset) is checked before anything is written. Then one streaming
pass (two with --dedup and rules: vlpipe.curate.select) feeds the writer (vlpipe.curate.formats)
and the report's histograms (vlpipe.curate.report) batch by batch.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Callable

import pyarrow.parquet as pq

from vlpipe.curate import formats, privacy, report, select
from vlpipe.errors import VlpipeError
from vlpipe.images.export import ExportPolicy
from vlpipe.images.quality import COLUMNS as SIGNALS
from vlpipe.images.thumbnails import thumbnail_jpeg
from vlpipe.reading.sources import read_source
from vlpipe.rundir import RunDir, write_atomic

SUMMARY = "curate.json"
DEFAULT_SHARD_SIZE = 10_000
#: what a SUBSET folder holds after a curate; another curate into it needs --overwrite
OURS = (formats.MANIFEST, report.REPORT, SUMMARY)


def curate(
    run_dir: str, to: str, where: list[str] | tuple = (), dedup: bool = False,
    fmt: str = "parquet", shard_size: int = DEFAULT_SHARD_SIZE, overwrite: bool = False,
    echo: Callable[[str], None] = lambda _: None, keep_metadata: bool = False,
    blur_faces: bool = False,
) -> dict:  # fmt: skip
    """Write the subset; returns what SUBSET/curate.json holds. WebDataset image bytes go out
    without their metadata unless `keep_metadata`; `blur_faces` blurs the run's face boxes in
    them and in the report's thumbnails."""
    if fmt not in formats.FORMATS:
        raise VlpipeError(f"unknown --format {fmt!r}: {' or '.join(formats.FORMATS)}")
    if shard_size < 1:
        raise VlpipeError("--shard-size must be at least 1")
    run = RunDir(run_dir)
    manifest = run.require_manifest()
    paths = run.parts()
    if not paths:
        raise VlpipeError(f"{run_dir} has no result parts to curate")
    rules, schema = select.check_rules(run, list(where), paths)
    if blur_faces and privacy.BOXES not in schema.names:
        raise VlpipeError(
            f"--blur-faces needs the run's face boxes: {run_dir} was made without --detect-faces"
        )
    fs, folder = formats.open_folder(to)
    _check_target(fs, folder, to, overwrite, run)
    if dedup:
        _fresh_dedup(run, run_dir, echo)
    parts = select.part_order(run, dedup)
    scores = [s for s in (manifest.get("models") or {}).get("scorers") or {} if s in schema.names]
    asks = [name for name, _ in (manifest.get("config") or {}).get("asks") or ()]
    # the models' own columns (--score, --ask, --candidates) stay out of the manifest too
    users = formats.user_columns(schema, [*scores, *asks, "caption_score"])
    shown = [c for c in SIGNALS if c in schema.names] + scores
    data = report.ReportData(rules, shown, score_ranges(run, parts, scores))
    columns = formats.FORMATS[fmt].columns(users)
    if columns is None:
        columns = [n for n in schema.names if n != "thumbnail"]
    _clear(fs, folder, overwrite)
    fs.makedirs(folder, exist_ok=True)
    policy = ExportPolicy(keep_metadata=keep_metadata, blur_faces=blur_faces)
    writer = formats.FORMATS[fmt](fs, folder, shard_size, users, policy)
    selection = select.Selection(rules)
    counted = privacy.Counts(schema)
    wanted = [*columns, *shown, *counted.columns, "uri"]
    for table, kept, counts in select.select(run, parts, rules, schema, wanted, dedup):
        data.add(table)
        writer.add(kept)
        counted.add(kept)
        selection = counts
    files = writer.close()
    summary = {
        "run": run_dir, "to": to, "format": fmt, "rules": [r.text for r in rules],
        "dedup": dedup, "rows": selection.seen, "kept": selection.kept,
        "removed_by_rule": selection.removed, "failing_each_rule": selection.failing,
        "duplicates": selection.duplicates, "unreadable": len(writer.unreadable),
        "unreadable_examples": [{"uri": u, "error": e} for u, e in writer.unreadable[:20]],
        "written": writer.rows, "files": [posixpath.basename(f) for f in files],
        **counted.summary(), "keep_metadata": keep_metadata, "blur_faces": blur_faces,
    }  # fmt: skip
    read = lambda uri, px: thumbnail_jpeg(read_source(uri, 2**26), px)  # noqa: E731
    if blur_faces:
        read = privacy.blurred_reader(run, parts, report.shown_uris(data), read)
    thumbs = report.thumbnails(data, read)
    html = report.render(run_dir, to, fmt, selection, data, thumbs, summary)
    write_atomic(fs, posixpath.join(folder, report.REPORT), html.encode("utf-8"))
    write_atomic(fs, posixpath.join(folder, SUMMARY), json.dumps(summary, indent=1).encode())
    return summary


def _check_target(fs, folder: str, to: str, overwrite: bool, run: RunDir) -> None:
    if posixpath.normpath(folder) == posixpath.normpath(run.path.split("://")[-1]):
        raise VlpipeError("--to must not be the run's own directory")
    if overwrite or not fs.exists(folder):
        return
    held = [n for n in _names(fs, folder) if n in OURS or n.endswith(".tar")]
    if held:
        raise VlpipeError(
            f"{to} already holds a subset ({held[0]}); pass --overwrite to replace it"
        )


def _clear(fs, folder: str, overwrite: bool) -> None:
    if overwrite and fs.exists(folder):
        for name in _names(fs, folder):
            if name in OURS or name.endswith(".tar"):
                fs.rm(posixpath.join(folder, name))


def _names(fs, folder: str) -> list[str]:
    return [posixpath.basename(p.rstrip("/")) for p in fs.ls(folder, detail=False)]


def _fresh_dedup(run: RunDir, run_dir: str, echo) -> None:
    """Clusters of every current row: `vlpipe dedup` (its defaults, incremental) when the last
    one is missing or older than the parts."""
    from vlpipe.dedup.output import read_summary
    from vlpipe.dedup.run import dedup
    from vlpipe.dedup.signals import part_rows

    last = read_summary(run)
    rows = sum(part_rows(run, [posixpath.basename(p) for p in run.parts()]).values())
    if last is None or last.get("images") != rows:
        echo("clustering near-duplicates first (vlpipe dedup)")
        dedup(run_dir)


def score_ranges(run: RunDir, parts: list[str], scores: list[str]) -> dict:
    """Each score's (min, max) from the parts' footer statistics: no data is read."""
    out: dict[str, list[float]] = {}
    for path in parts:
        meta = pq.ParquetFile(run.fs.open(path, "rb")).metadata
        names = meta.schema.to_arrow_schema().names
        for s in scores:
            if s not in names:
                continue
            j = names.index(s)
            for g in range(meta.num_row_groups):
                stats = meta.row_group(g).column(j).statistics
                if stats is not None and stats.has_min_max:
                    lo, hi = out.get(s, [float(stats.min), float(stats.max)])
                    out[s] = [min(lo, float(stats.min)), max(hi, float(stats.max))]
    return {k: tuple(v) for k, v in out.items()}
