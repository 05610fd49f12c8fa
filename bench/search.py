"""Search at scale: filtered, keyword, hybrid and large-k queries on a 1M-row index.

Data (made once, kept under bench/results/tmp/search and reused): a synthetic run of N rows
(default 1,000,000) in parts of 100,000, 64-d clustered fp16 vectors (bench/synthetic.py),
captions drawn from a small vocabulary with a made-up word (RARE) in exactly 0.1% of the rows,
and two user columns: `license` ('cc0' in exactly 1% of the rows, 'cc-by' in 49%, 'cc-by-sa' and
'proprietary' the rest) and `views` (int64). Indexed with `build_index(kind="auto")`, which also
writes the BM25 keyword index over the captions.

Queries, each in a fresh process (`run_child`: peak RSS is that process's, opening the index
included), median of 3 rounds:

    a  vector top-10, no filter (the reference)
    b  vector top-10, license = 'cc0'   (1% of the rows pass)
    c  vector top-10, license = 'cc-by' (49%)
    d  keyword top-10 for the rare word (`search_text(mode="keyword")`)
    e  hybrid top-10 for the rare word (`search_text(mode="hybrid")`; the synthetic run has no
       text embedder, so the searcher gets a fixed one mapping the word to query vector 0, as
       tests/test_search_hybrid.py does; keyword side, fusion and weights are vlpipe's own)
    f  k=10,000 for 10 query vectors, columns license + views and the embeddings attached
       (`attach`), written as one Parquet file (`hits_table`, `write_hits`)

Baseline, same data, same rounds: a plain pyarrow + NumPy full scan in its own process, part by
part: the embedding column (and the filter column) -> filter mask, dot products, argpartition
top-k merged across parts; for keywords the caption column and a substring match; then the hits'
uri and caption (for f: image_id, uri, caption, license, views, embedding) read from the parts
that hold them, and for f the same Parquet file written.

Latency is the query on an opened index (what a session or `vlpipe serve` pays per query; the
first call in the process, so it includes reading the filter's column or loading the keyword
index) against the scan's compute from the first read to the answer; the index's open time, and
the same query repeated in the process, are in the details. Every hit is checked against the
generated data: filtered hits satisfy the filter, k hits come back, the rare word's rows are the
keyword and hybrid hits, f's columns match the parts. A failed check saves the result and exits
with an error (BENCHMARKS.md is then left as it was).

    python -m bench.search [--rows 1000000] [--quick] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from bench.common import Figure, Report, run_child
from bench.search_data import (
    BIG_QUERIES,
    DIM,
    LICENSES,
    PART_ROWS,
    QUERY_FILE,
    RARE,
    USER_COLUMNS,
    Truth,
    dataset,
)
from bench.search_queries import FIGURED, QUERIES, Query, agreement, check
from bench.search_scan import fetch, scan, uris_of

NAME = "search"
TITLE = "Search at scale: filtered, keyword, hybrid and large-k queries on a 1M-row index"
ROUNDS = 3
ROWS, QUICK_ROWS, SMOKE_ROWS = 1_000_000, 100_000, 3_000

SCAN = "pyarrow + NumPy full scan"


# ---- child processes (each prints one JSON line) ------------------------------------------------


class FixedText:
    """A text encoder for the synthetic run: every text is the same vector (query vector 0)."""

    def __init__(self, vector: np.ndarray):
        self.vector = np.asarray(vector, np.float32)

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        return np.stack([self.vector] * len(texts))


def child_vlpipe(name: str, run: str) -> dict:
    from vlpipe.search.results import attach, hits_table, write_hits
    from vlpipe.search.searcher import Searcher

    q = QUERIES[name]
    vectors = np.load(Path(run) / QUERY_FILE)
    start = time.perf_counter()
    searcher = Searcher.open(run)
    out: dict = {"open_ms": _ms_since(start)}
    if q.kind == "bulk":
        path = Path(run) / "hits-vlpipe.parquet"
        labels = [f"q{i}" for i in range(BIG_QUERIES)]
        t0 = time.perf_counter()
        results = searcher.search_vectors(vectors[:BIG_QUERIES], q.k)
        t1 = time.perf_counter()
        attach(searcher.rows(), results, USER_COLUMNS, embeddings=True)
        t2 = time.perf_counter()
        write_hits(str(path), hits_table(labels, results, USER_COLUMNS))
        out |= {
            "query_ms": _ms_since(t0),
            "search_ms": 1000 * (t1 - t0),
            "attach_ms": 1000 * (t2 - t1),
            "write_ms": _ms_since(t2),
            "per_query": [len(r) for r in results],
            "file": str(path),
        }
    else:
        if q.kind == "hybrid":
            searcher._text_queries = FixedText(vectors[0])  # no real embedder in this run
        t0 = time.perf_counter()
        hits = _vlpipe_ask(searcher, q, vectors[0])
        out["query_ms"] = _ms_since(t0)
        t1 = time.perf_counter()
        _vlpipe_ask(searcher, q, vectors[1] if q.kind == "vector" else vectors[0])
        out["repeat_ms"] = _ms_since(t1)
        out |= {"uris": [h.uri for h in hits], "found_by": [h.found_by for h in hits]}
    out["kind"] = searcher.meta["kind"]
    out["max_rss_mb"] = _max_rss_mb()
    return out


def _vlpipe_ask(searcher, q: Query, vector: np.ndarray) -> list:
    if q.kind == "vector":
        return searcher.search_vectors(vector[None], q.k, q.where)[0]
    return searcher.search_text([RARE], q.k, mode=q.kind)[0]


def child_scan(name: str, run: str) -> dict:
    """The same question answered by reading the parts, no index."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    q = QUERIES[name]
    if q.kind == "hybrid":  # vlpipe's fusion constants (RRF_K etc.), imported before the clock
        from vlpipe.search.hits import COMMON_WEIGHT, RARE_SHARE, RARE_WEIGHT, RRF_DEPTH, RRF_K
    vectors = np.load(Path(run) / QUERY_FILE)
    parts = sorted(str(p) for p in (Path(run) / "parts").glob("part-*.parquet"))
    start = time.perf_counter()
    out: dict = {}
    if q.kind == "bulk":
        path = Path(run) / "hits-scan.parquet"
        tops, _, sizes = scan(parts, vectors[:BIG_QUERIES], q.k)
        rows = np.concatenate([r for r, _ in tops])
        columns = ["image_id", "uri", "caption", *USER_COLUMNS, "embedding"]
        picked = fetch(parts, sizes, rows, columns)
        head = {
            "query": [f"q{i}" for i, (r, _) in enumerate(tops) for _ in r],
            "rank": pa.array(
                np.concatenate([np.arange(1, len(r) + 1) for r, _ in tops]), pa.int32()
            ),
            "score": pa.array(np.concatenate([s for _, s in tops]), pa.float32()),
        }
        table = pa.table({**head, **{c: picked.column(c) for c in columns}})
        pq.write_table(table, path, compression="zstd")
        out |= {"per_query": [len(r) for r, _ in tops], "file": str(path)}
    elif q.kind == "vector":
        tops, _, sizes = scan(parts, vectors[:1], q.k, license=q.license)
        out["uris"] = uris_of(parts, sizes, tops[0][0])
    elif q.kind == "keyword":  # no relevance ranking: the first k rows that hold the word
        _, matches, sizes = scan(parts, None, q.k, word=RARE)
        out["uris"] = uris_of(parts, sizes, matches[: q.k])
    else:  # hybrid: vlpipe's fusion over the scan's vector ranking and its word matches
        depth = max(q.k, RRF_DEPTH)
        tops, matches, sizes = scan(parts, vectors[:1], depth, word=RARE)
        share = len(matches) / sum(sizes)
        weight = RARE_WEIGHT if share <= RARE_SHARE else COMMON_WEIGHT
        fused: dict[int, float] = {}
        for w, ranking in ((1.0, tops[0][0]), (weight, matches[:depth])):
            for rank, row in enumerate(ranking.tolist(), 1):
                fused[row] = fused.get(row, 0.0) + w / (RRF_K + rank)
        best = sorted(fused, key=lambda r: -fused[r])[: q.k]
        out["uris"] = uris_of(parts, sizes, np.array(best, np.int64))
    out["query_ms"] = _ms_since(start)
    out["max_rss_mb"] = _max_rss_mb()
    return out


def _ms_since(start: float) -> float:
    return 1000 * (time.perf_counter() - start)


def _max_rss_mb() -> float:
    """This process's high-water RSS (VmHWM): exact, unlike a sampler. Not ru_maxrss, which
    Linux keeps across fork and exec, so a child reports its parent's peak when that is higher."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


CHILDREN = {"vlpipe": child_vlpipe, "scan": child_scan}


def child(contender: str, name: str, run: Path) -> list[str]:
    return [sys.executable, "-m", "bench.search", "--child", contender, name, str(run)]


# ---- the benchmark -------------------------------------------------------------------------------


def measure(run: Path, truth: Truth, rounds: int) -> tuple[dict, list[str]]:
    samples = {n: {"vlpipe": [], "scan": []} for n in QUERIES}
    checks: dict = {n: {} for n in QUERIES}
    problems = []
    for r in range(rounds):  # interleaved: load changes on the shared machine hit both alike
        for name in QUERIES:
            for contender in ("vlpipe", "scan"):
                done = run_child(child(contender, name, run))
                out = done.output
                out["peak_rss_mb"] = max(out.pop("max_rss_mb"), done.peak_rss_bytes / 2**20)
                out["wall_s"] = done.wall_s
                got = check(name, out, truth, run)
                problems += [f"{name} {contender}: {p}" for p in got["problems"]]
                if r == 0:
                    checks[name][contender] = got
                samples[name][contender].append(out)
                print(
                    f"round {r + 1} {name} {contender}: {out['query_ms']:.1f} ms,"
                    f" {out['peak_rss_mb']:.0f} MB, {got['hits']} hits",
                    flush=True,
                )
    rows = {}
    for name, q in QUERIES.items():
        mine, theirs = checks[name]["vlpipe"], checks[name]["scan"]
        row = {
            "label": q.label,
            "hits": mine["hits"],
            "scan_hits": theirs["hits"],
            "satisfied": mine["satisfied"],
            "scan_satisfied": theirs["satisfied"],
            "agreement": agreement(mine, theirs, q.kind),
        }
        for contender, prefix in (("vlpipe", ""), ("scan", "scan_")):
            outs = samples[name][contender]
            for key in (
                "query_ms",
                "peak_rss_mb",
                "open_ms",
                "repeat_ms",
                "search_ms",
                "attach_ms",
                "write_ms",
            ):
                values = [o[key] for o in outs if key in o]
                if values:
                    row[prefix + key] = round(statistics.median(values), 2)
            row[prefix + "rounds_ms"] = [round(o["query_ms"], 2) for o in outs]
        if q.kind == "bulk":
            row["file_mb"] = round(mine["file_mb"], 1)
        if q.kind == "hybrid":
            row["found_by"] = samples[name]["vlpipe"][0]["found_by"]
        rows[name] = row
    return rows, problems


def run(args, name: str = NAME) -> dict:
    n = args.rows or (QUICK_ROWS if args.quick else ROWS)
    report = Report(name, TITLE)
    path, meta, setup_s = dataset(n)
    truth = Truth(path)
    assert truth.rows == n == meta["count"], (truth.rows, n, meta["count"])
    rows, problems = measure(path, truth, args.rounds)
    for name in FIGURED:
        r, label = rows[name], QUERIES[name].label
        report.add(
            Figure(
                f"{label}: latency",
                r["query_ms"],
                r["scan_query_ms"],
                SCAN,
                "ms",
                higher_is_better=False,
            )
        )
        report.add(
            Figure(
                f"{label}: peak RSS",
                r["peak_rss_mb"],
                r["scan_peak_rss_mb"],
                SCAN,
                "MB",
                higher_is_better=False,
            )
        )
    for name in ("a", "e"):
        r = rows[name]
        print(
            f"{QUERIES[name].label}: {r['query_ms']:.1f} ms (repeat {r['repeat_ms']:.1f} ms,"
            f" index open {r['open_ms']:.0f} ms); full scan {r['scan_query_ms']:.1f} ms"
        )
    report.details = {
        "rows": n,
        "parts": -(-n // PART_ROWS),
        "dim": DIM,
        "rounds": args.rounds,
        "rare_word": RARE,
        "rare_rows": int(truth.rare.sum()),
        "license_rows": {lic: truth.count(lic) for lic in LICENSES},
        "index": {k: meta.get(k) for k in ("kind", "factory", "search_params", "count")}
        | {"keyword_vocabulary": (meta.get("keyword") or {}).get("vocabulary")},
        "parts_mb": round(_size(path / "parts") / 2**20, 1),
        "index_mb": round(_size(path / "index") / 2**20, 1),
        "setup_s": round(setup_s, 1),
        "queries": rows,
        "problems": list(dict.fromkeys(problems)),  # each once, not once per round
    }
    result = report.finish()
    if problems:
        wrong = "\n  ".join(report.details["problems"])
        raise AssertionError(
            f"search results are wrong (saved, BENCHMARKS.md not updated):\n  {wrong}"
        )
    return result


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.search", description=TITLE)
    parser.add_argument("--rows", type=int, help=f"rows in the run [default {ROWS:,}]")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_ROWS:,} rows")
    parser.add_argument("--rounds", type=int, default=ROUNDS, help="processes per query")
    parser.add_argument(
        "--smoke", action="store_true", help=f"{SMOKE_ROWS:,} rows, one round, nothing published"
    )
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        contender, name, path = args.child
        print(json.dumps(CHILDREN[contender](name, path)))
        return 0
    if args.smoke:  # every query and contender at a tiny size; a real result is never touched
        args.rows, args.rounds = SMOKE_ROWS, 1
        run(args, name=f"tmp/{NAME}-smoke")
        print("smoke: not published")
        return 0
    from bench.report import run_and_publish

    return run_and_publish(NAME, lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
