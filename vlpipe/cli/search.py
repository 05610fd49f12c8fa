"""`vlpipe search`: text or image queries against a built index; a table or JSON lines out.

Imports stay lean for a fast cold start: the index, the id map and the embedder's query tower,
never Beam.
"""

from __future__ import annotations

import json
import sys

import click

from vlpipe.errors import VlpipeError

#: hits per query printed (more go to a file with --output)
SCREEN_K = 1000


@click.command("search")
@click.argument("query", required=False)
@click.option("--index", "index", required=True, help="Run directory or its index/ directory.")
@click.option("--image", "image", default=None, help="Search with this image instead of text.")
@click.option(
    "--queries", "queries_file", default=None, help="File of text queries, one a line ('-': stdin)."
)
@click.option(
    "-k",
    "k",
    type=int,
    default=10,
    show_default=True,
    help="Hits per query, 1..1000 (10,000 with --output; a smaller index returns all it has).",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per hit per line.")
@click.option(
    "--where", default=None,
    help="Only rows matching this filter, e.g. \"license = 'cc-by' AND orig_width >= 512\".",
)  # fmt: skip
@click.option(
    "--mode", type=click.Choice(["vector", "keyword", "hybrid"]), default=None,
    help="Text queries: vector, keyword (BM25 over captions and alt text) or hybrid"
    " [default: vector; hybrid by name (it scores below vector on Flickr8k, bench/hybrid.py)].",
)  # fmt: skip
@click.option("--columns", default=None, help="Comma-separated run columns to add to each hit.")
@click.option("--embeddings", is_flag=True, help="Add each hit's stored embedding (--json, -o).")
@click.option(
    "-o", "--output", "output", default=None,
    help="Write every hit of every query to this Parquet file (k up to 10,000).",
)  # fmt: skip
@click.option(
    "--dedup", is_flag=True,
    help="Show each near-duplicate cluster once, as its representative (needs `vlpipe dedup`).",
)  # fmt: skip
@click.option("--embedder", default=None, help="Query embedder [default: the index's own].")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:N or auto.")
def command(
    query: str | None,
    index: str,
    image: str | None,
    queries_file: str | None,
    k: int,
    as_json: bool,
    where: str | None,
    mode: str | None,
    columns: str | None,
    embeddings: bool,
    output: str | None,
    dedup: bool,
    embedder: str | None,
    device: str,
) -> None:
    """Find the indexed images nearest to QUERY (text), --image, or each line of --queries.

    Prints rank, score (cosine similarity), uri and caption per hit; --json prints one object
    per hit per line with the query. -k above the index's size returns every indexed image.
    Refused with one line and exit status 1: an empty query, -k outside 1..1000, none or more
    than one of QUERY/--image/--queries, an unreadable image or queries file, a missing or
    corrupt index, and an --embedder that embeds differently from the one the index was built
    with.
    """
    given = [
        name
        for name, v in (("QUERY", query), ("--image", image), ("--queries", queries_file))
        if v is not None
    ]
    if len(given) != 1:
        raise VlpipeError(
            "give exactly one of QUERY, --image or --queries"
            + (f" (got {' and '.join(given)})" if given else "")
        )
    from vlpipe.search.results import MAX_K_OUT
    from vlpipe.search.searcher import Searcher

    limit = MAX_K_OUT if output else SCREEN_K
    if not 1 <= k <= limit:
        more = "" if output else f" (up to {MAX_K_OUT} with --output)"
        raise VlpipeError(f"-k must be between 1 and {limit}, got {k}{more}")
    if mode is not None and (image is not None):
        raise VlpipeError("--mode applies to text queries, not --image")
    wanted = [c.strip() for c in (columns or "").split(",") if c.strip()]
    texts = _read_queries(queries_file) if queries_file is not None else [query]
    if image is None and any(not t.strip() for t in texts):
        raise VlpipeError("empty query: give some words to search for")
    picture = _read_image(image) if image is not None else None

    searcher = Searcher.open(index, embedder=embedder, device=device)
    if picture is not None:
        labels, kind = [image], "image"
        results = searcher.search_image([picture], k, where=where, dedup=dedup)
    else:
        labels, kind = texts, "text"
        results = searcher.search_text(texts, k, mode=mode, where=where, dedup=dedup)
    if wanted or embeddings:
        from vlpipe.search.results import attach

        attach(searcher.rows(), results, wanted, embeddings)
    if output:
        from vlpipe.search.results import hits_table, write_hits

        write_hits(output, hits_table(labels, results, wanted))
        count = sum(len(h) for h in results)
        click.echo(f"wrote {count} hits of {len(labels)} queries to {output}")
        return
    for label, hits in zip(labels, results, strict=True):
        if as_json:
            for hit in hits:
                click.echo(json.dumps({"query": label, "query_type": kind, **hit.to_dict()}))
        else:
            if len(labels) > 1:
                click.echo(f"query: {label}")
            click.echo(format_table(hits))


def format_table(hits: list) -> str:
    """Aligned plain-text columns: rank, score, uri, caption."""
    width = max([len("uri"), *(len(h.uri) for h in hits)])
    lines = [f"{'rank':>4}  {'score':>6}  {'uri':<{width}}  caption"]
    for h in hits:
        copies = f"  [+{h.duplicates} duplicates]" if h.duplicates else ""
        lines.append(f"{h.rank:>4}  {h.score:6.4f}  {h.uri:<{width}}  {h.caption or ''}{copies}")
    return "\n".join(lines)


def _read_queries(path: str) -> list[str]:
    try:
        text = sys.stdin.read() if path == "-" else open(path, encoding="utf-8").read()
    except (OSError, UnicodeDecodeError) as exc:
        raise VlpipeError(f"cannot read queries file {path}: {exc}") from None
    queries = [line.strip() for line in text.splitlines() if line.strip()]
    if not queries:
        raise VlpipeError(f"no queries in {path}: it holds no non-empty line")
    return queries


def _read_image(path: str):
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            return im.convert("RGB")
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError, ValueError) as exc:
        raise VlpipeError(f"cannot read image {path}: {exc}") from None
