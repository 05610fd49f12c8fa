"""`vlpipe curate OUT --to SUBSET`: a filtered, optionally deduplicated subset of a run."""

from __future__ import annotations

import click

from vlpipe.curate.run import DEFAULT_SHARD_SIZE


@click.command("curate")
@click.argument("run_dir")
@click.option("--to", "to", required=True, help="Folder (or fsspec URL) for the subset.")
@click.option(
    "--where", "where", multiple=True,
    help="Keep rows where this holds (any column: quality signals, scores, text_score, your "
    "columns), e.g. \"sharpness >= 100 AND brightness > 0.2\". Repeatable: all must hold.",
)  # fmt: skip
@click.option("--dedup", is_flag=True, help="Keep one row per near-duplicate cluster.")
@click.option(
    "--format", "fmt", type=click.Choice(["parquet", "webdataset"]), default="parquet",
    show_default=True,
    help="parquet: a manifest (url, caption, your columns) for vlpipe run or img2dataset; "
    "webdataset: tar shards with the image bytes.",
)  # fmt: skip
@click.option("--shard-size", type=int, default=DEFAULT_SHARD_SIZE, show_default=True,
              help="Samples per tar, or rows per Parquet row group.")  # fmt: skip
@click.option("--overwrite", is_flag=True, help="Replace a subset already in --to.")
@click.option(
    "--keep-metadata", is_flag=True,
    help="webdataset: copy image bytes exactly as read (by default their location, camera serial"
    " and other metadata are stripped, pixels untouched).",
)  # fmt: skip
@click.option(
    "--blur-faces", is_flag=True,
    help="Blur the run's face boxes (vlpipe run --detect-faces) in the exported images and the"
    " report's thumbnails.",
)  # fmt: skip
def command(run_dir: str, to: str, where, dedup: bool, fmt: str, shard_size: int,
            overwrite: bool, keep_metadata: bool, blur_faces: bool) -> None:  # fmt: skip
    """Write the rows of RUN_DIR that pass every --where to SUBSET, with SUBSET/report.html."""
    from vlpipe.curate.run import curate

    s = curate(run_dir, to, list(where), dedup, fmt, shard_size, overwrite, echo=click.echo,
               keep_metadata=keep_metadata, blur_faces=blur_faces)  # fmt: skip
    removed = ", ".join(f"{n:,} by --where {r!r}" for r, n in zip(s["rules"], s["removed_by_rule"],
                                                                   strict=True))  # fmt: skip
    extra = [removed] if removed else []
    if dedup:
        extra.append(f"{s['duplicates']:,} duplicates")
    if s["unreadable"]:
        extra.append(f"{s['unreadable']:,} unreadable sources (listed in curate.json)")
    click.echo(f"{s['written']:,} of {s['rows']:,} rows written to {to} ({fmt})"
               + (f"; removed {'; '.join(extra)}" if extra else ""))  # fmt: skip
    if s.get("with_location") is not None:
        faces = "" if s.get("with_faces") is None else f", {s['with_faces']:,} show faces"
        click.echo(f"privacy: {s['with_location']:,} kept rows hold a location{faces}")
    click.echo(f"report: {to.rstrip('/')}/report.html")
