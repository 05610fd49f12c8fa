"""The BENCHMARKS.md block of `python -m bench.search` (bench/report.py renders it from the
saved result), apart from the measuring code."""

from __future__ import annotations


def markdown(result: dict) -> str:
    d = result["details"]
    idx = d["index"]
    knob = ", ".join(
        f"{k}={v}" for k, v in (idx.get("search_params") or {}).items() if k != "param_string"
    )
    lines = [
        f"A synthetic run of {d['rows']:,} rows ({d['parts']} part{'s' * (d['parts'] > 1)},"
        f" {d['parts_mb']:,} MB):"
        f" {d['dim']}-d clustered fp16 vectors, captions from a small vocabulary with the made-up"
        f" word '{d['rare_word']}' in {d['rare_rows']:,} rows (0.1%), user columns `license`"
        f" (cc0 {d['license_rows']['cc0']:,} rows, cc-by {d['license_rows']['cc-by']:,}) and"
        f' `views`. Index: `build_index(kind="auto")` -> {idx["kind"]} `{idx["factory"]}`'
        f"{f' ({knob})' if knob else ''} and BM25 over the captions ({d['index_mb']:,} MB in"
        " all).",
        "",
        f"Each query runs in a fresh process, median of {d['rounds']}. **vlpipe ms** is the query"
        " on an opened `Searcher` (its first call in the process: it includes reading the"
        " filter's column, or loading the keyword index); **open ms** is `Searcher.open` (FAISS"
        " index + id map) before it, and **repeat ms** the same kind of query again in that"
        " process (a filter's rows are then cached). **Full scan** is a plain pyarrow + NumPy"
        " script without an index, part by part: embedding (and `license`) columns -> filter"
        " mask, dot products, argpartition top-k; for keywords the caption column and a"
        " substring match (no ranking: the first k rows that hold the word); then the hits'"
        " columns read from the parts that hold them. Peak RSS is the whole process's"
        " (interpreter, imports, index or scan).",
        "",
        "| query | vlpipe ms | repeat ms | open ms | full-scan ms | ratio | vlpipe peak RSS MB"
        " | full-scan peak RSS MB | hits (vlpipe / scan) | every hit right | agrees with scan |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in d["queries"].values():
        ratio = r["query_ms"] / r["scan_query_ms"] if r["scan_query_ms"] else float("nan")
        sat = {True: "yes", False: "**no**", None: "-"}
        right = f"{sat[r['satisfied']]} / {sat[r['scan_satisfied']]}"
        agree = "-" if r["agreement"] is None else f"{r['agreement']:.2f}"
        lines.append(
            f"| {r['label']} | {_f(r['query_ms'])} | {_f(r.get('repeat_ms'))} |"
            f" {_f(r.get('open_ms'))} | {_f(r['scan_query_ms'])} | {ratio:.2f}x |"
            f" {r['peak_rss_mb']:.0f} | {r['scan_peak_rss_mb']:.0f} |"
            f" {r['hits']:,} / {r['scan_hits']:,} | {right} | {agree} |"
        )
    f = d["queries"]["f"]
    lines += [
        "",
        "Every hit right: b, c every hit passes the filter; d every hit holds the word; e the"
        " word's rows come first (all of them, up to k); f k hits per query and license / views"
        " in the file equal to the parts'. Agrees with scan: the share of the scan's exact hits"
        " (inner product of the stored vectors) that vlpipe returns too, averaged over f's"
        " queries. Queries d and e have no such column: the scan does not rank by BM25.",
        "",
        f"f) in vlpipe: search {_f(f.get('search_ms'))} ms, reading the hits' columns and"
        f" embeddings from the parts (`attach`) {_f(f.get('attach_ms'))} ms, building and writing"
        f" the file {_f(f.get('write_ms'))} ms ({f.get('file_mb', '-')} MB).",
        "",
        "The synthetic run has no text embedder: for e the searcher is given a fixed text encoder"
        " that maps the word to query vector 0 (as tests/test_search_hybrid.py's FakeQueries do);"
        ' the rest is vlpipe\'s own `search_text(mode="hybrid")`: BM25, the rare-word weight and'
        ' reciprocal rank fusion. d is `search_text(mode="keyword")`, which needs no embedder.'
        " The full scan for e fuses its vector top-100 and its word matches with the same"
        " constants.",
    ]
    if d.get("problems"):
        lines += ["", "**Wrong results:** " + "; ".join(d["problems"])]
    return "\n".join(lines) + "\n"


def _f(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:,.0f}" if x >= 100 else f"{x:.1f}" if x >= 10 else f"{x:.2f}"
