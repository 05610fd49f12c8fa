"""`vlpipe index RUN_DIR`: build the run's FAISS index, or add the parts that are new since."""

from __future__ import annotations

import click

KINDS = ["auto", "flat", "hnsw", "ivfsq", "ivfpq"]


@click.command("index")
@click.argument("run_dir")
@click.option(
    "--kind",
    type=click.Choice(KINDS),
    default="auto",
    show_default=True,
    help="auto: exact below 20k vectors, HNSW up to 200k, then IVF lists of fp16 or 8-bit "
    "vectors, or IVF-PQ codes when only they fit the memory budget.",
)
@click.option(
    "--memory-budget",
    default=None,
    help="Largest index size, e.g. 4GB or 512MB [default: half the physical memory].",
)
@click.option("--rebuild", is_flag=True, help="Rebuild from all parts instead of adding new ones.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def command(run_dir: str, kind: str, memory_budget: str | None, rebuild: bool, quiet: bool) -> None:
    """Index RUN_DIR's embeddings into RUN_DIR/index/ (a later call adds only new parts)."""
    from vlpipe.api import Run

    meta = Run(run_dir).index(kind, memory_budget, rebuild, progress=not quiet)
    click.echo(summary(meta, run_dir))


def summary(meta: dict, run_dir: str) -> str:
    """One or two lines: what happened, what the index is, how good its search is."""
    action = meta.get("last_action", {})
    where = f"{run_dir.rstrip('/')}/index"
    what = f"{meta['kind']} ({meta['factory']}) over {meta['count']} vectors"
    if action.get("action") == "up-to-date":
        return f"index up to date: {what} in {where}"
    verb = "built" if action.get("action") == "built" else f"added {action.get('added', 0)} to"
    line = f"{verb} {what} in {where}"
    if action.get("action") == "built" and action.get("reason") not in (None, "no index yet"):
        line += f" (rebuilt: {action['reason']})"
    knob = {k: v for k, v in meta.get("search_params", {}).items() if k != "param_string"}
    if knob:
        ((name, value),) = knob.items()
        line += f"\n{name}={value}: recall@10 {meta['recall_at_10']:.3f} against exact search"
    skipped = [
        f"{action[key]} {label}"
        for key, label in (("duplicates_skipped", "duplicate ids"), ("invalid_skipped", "invalid"))
        if action.get(key)
    ]
    if action.get("corrupt_parts"):
        skipped.append(f"{len(action['corrupt_parts'])} corrupt part(s)")
    if skipped:
        line += f"\nskipped: {', '.join(skipped)}"
    return line
