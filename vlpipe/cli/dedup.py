"""`vlpipe dedup RUN_DIR`: near-duplicate clusters, a report and an optional keep list."""

from __future__ import annotations

import click

from vlpipe.dedup.run import (
    DEFAULT_METHOD,
    DEFAULT_NEAR_PHASH_DISTANCE,
    DEFAULT_NEAR_THRESHOLD,
    DEFAULT_PHASH_DISTANCE,
    DEFAULT_THRESHOLD,
    MAX_NEAR_PHASH_DISTANCE,
    MAX_PHASH_DISTANCE,
)


@click.command("dedup")
@click.argument("run_dir")
@click.option(
    "--method",
    type=click.Choice(["embedding", "phash", "both"]),
    default=DEFAULT_METHOD,
    show_default=True,
    help="Pairs by embedding cosine, by perceptual-hash bits, or either. Identical bytes "
    "(sha256) always pair.",
)
@click.option(
    "--threshold",
    type=float,
    default=DEFAULT_THRESHOLD,
    show_default=True,
    help="Smallest embedding cosine of a duplicate pair, in (0, 1].",
)
@click.option(
    "--phash-distance",
    type=int,
    default=DEFAULT_PHASH_DISTANCE,
    show_default=True,
    help=f"Most phash bits (of 64) a duplicate pair differs in, 0..{MAX_PHASH_DISTANCE}.",
)
@click.option(
    "--near-threshold",
    type=float,
    default=DEFAULT_NEAR_THRESHOLD,
    show_default=True,
    help="With --method both: a pair with a cosine from this up to --threshold pairs too when "
    "one is among the other's 16 nearest and their phash agree (--near-phash-distance). "
    "At or above --threshold: off.",
)
@click.option(
    "--near-phash-distance",
    type=int,
    default=DEFAULT_NEAR_PHASH_DISTANCE,
    show_default=True,
    help=f"Most phash bits a --near-threshold pair differs in, 0..{MAX_NEAR_PHASH_DISTANCE}.",
)
@click.option("--keep-list", default=None, help="Write the image_ids to keep, one per line.")
@click.option("--full", is_flag=True, help="Compare every row again, not only new ones.")
@click.option("--no-report", is_flag=True, help="Skip OUT/dedup/report.html.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON line.")
def command(
    run_dir: str,
    method: str,
    threshold: float,
    phash_distance: int,
    near_threshold: float,
    near_phash_distance: int,
    keep_list: str | None,
    full: bool,
    no_report: bool,
    as_json: bool,
) -> None:
    """Group RUN_DIR's near-duplicate images into RUN_DIR/dedup/clusters.parquet."""
    from vlpipe.api import Run
    from vlpipe.dedup.output import write_keep_list

    options = {
        "method": method,
        "threshold": threshold,
        "phash_distance": phash_distance,
        "near_threshold": near_threshold,
        "near_phash_distance": near_phash_distance,
    }
    summary = Run(run_dir).dedup(**options, full=full)
    if as_json:
        import json

        click.echo(json.dumps(summary))
    else:
        click.echo(summary_line(summary))
    where = f"{run_dir.rstrip('/')}/dedup"
    if not no_report:
        from vlpipe.dedup.report import write_report

        report = write_report(run_dir)
        if not as_json:
            click.echo(f"report: {report}")
    if not as_json:
        click.echo(f"clusters: {where}/clusters.parquet")
    if keep_list:
        from vlpipe.rundir import RunDir

        kept = write_keep_list(RunDir(run_dir), keep_list)
        if not as_json:
            click.echo(f"keep list: {kept} image_ids in {keep_list}")


def summary_line(s: dict) -> str:
    from vlpipe.dedup.report import rule

    how = ", ".join(f"{n} by {m}" for m, n in s["by_method"].items() if n)
    return (
        f"{s['images']} images: {s['duplicates']} duplicates in {s['clusters']} clusters"
        f"{f' ({how})' if how else ''}; keep {s['kept']} [{rule(s, short=True)}; {s['run']}, "
        f"{s['new_rows']} rows compared, {s['seconds']:.1f} s]"
    )
