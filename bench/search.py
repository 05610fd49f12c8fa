"""Search at scale: filtered, keyword, hybrid and large-k queries on a 1M-row index.

Data (made once, kept under bench/results/tmp/search and reused): a synthetic run of N rows
(default 1,000,000) in parts of 100,000, 64-d clustered fp16 vectors (tests/synthetic.py),
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
import os
import shutil
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.common import SCRATCH, Figure, Report, run_child

NAME = "search"
TITLE = "Search at scale: filtered, keyword, hybrid and large-k queries on a 1M-row index"
ROOT = SCRATCH / "search"
ROWS, QUICK_ROWS = 1_000_000, 100_000
PART_ROWS = 100_000
DIM = 64
SEED = 0
ROUNDS = 3
K = 10
BIG_K = 10_000
BIG_QUERIES = 10
RARE = "zorblax"  # a made-up word, in exactly RARE_SHARE of the captions
RARE_SHARE = 0.001
LICENSES = ("cc0", "cc-by", "cc-by-sa", "proprietary")
LICENSE_SHARES = (0.01, 0.49, 0.30, 0.20)  # exact per part
USER_COLUMNS = ("license", "views")
SCAN = "pyarrow + NumPy full scan"
ADJECTIVES = ("red", "small", "old", "bright", "wooden", "busy", "quiet", "green", "large", "dark")
NOUNS = (
    "dog",
    "cat",
    "car",
    "house",
    "tree",
    "bicycle",
    "boat",
    "chair",
    "lamp",
    "child",
    "bird",
    "table",
)
VERBS = ("sitting", "standing", "parked", "lying", "running", "waiting")
PLACES = (
    "on the grass",
    "by the sea",
    "in a park",
    "on a street",
    "near a window",
    "in the snow",
    "under a bridge",
    "at night",
)
QUERY_FILE, TRUTH_FILE = "queries.npy", "truth.npz"


@dataclass(frozen=True)
class Query:
    label: str
    kind: str  # vector | keyword | hybrid | bulk
    k: int
    license: str | None = None  # vector queries: the filter license = '<this>'

    @property
    def where(self) -> str | None:
        return None if self.license is None else f"license = '{self.license}'"


QUERIES = {
    "a": Query("a) vector top-10, no filter", "vector", K),
    "b": Query("b) vector top-10, license = 'cc0' (1%)", "vector", K, "cc0"),
    "c": Query("c) vector top-10, license = 'cc-by' (49%)", "vector", K, "cc-by"),
    "d": Query(f"d) keyword top-10, '{RARE}' (0.1%)", "keyword", K),
    "e": Query(f"e) hybrid top-10, '{RARE}' (0.1%)", "hybrid", K),
    "f": Query(
        f"f) k={BIG_K:,} x {BIG_QUERIES} queries + columns + embeddings -> Parquet", "bulk", BIG_K
    ),
}
FIGURED = ("b", "c", "d", "f")  # vlpipe vs the full scan; a and e: absolute latency


# ---- the data (not timed) ------------------------------------------------------------------------


def dataset(n: int) -> tuple[Path, dict, float]:
    """The run of n rows, written once and kept; its index built (or found up to date)."""
    from vlpipe.index.build import build_index

    path = ROOT / f"rows-{n}"
    start = time.perf_counter()
    if not (path / ".complete").exists():
        shutil.rmtree(path, ignore_errors=True)
        write_run(path, n)
        (path / ".complete").write_text("")
        print(f"wrote {path} in {time.perf_counter() - start:.0f} s", flush=True)
    meta = build_index(str(path), kind="auto", progress=False)
    action = meta.get("last_action", {}).get("action")
    print(f"index {action}: {meta['kind']} {meta.get('factory')}", flush=True)
    return path, meta, time.perf_counter() - start


def write_run(path: Path, n: int) -> None:
    import pyarrow as pa

    from tests.synthetic import clustered_chunks, part_table, write_manifest
    from vlpipe.index.tune import make_queries
    from vlpipe.rundir import PARTS, RunDir, write_table_atomic

    run = RunDir(str(path))
    licenses, views, rare, sample = [], [], [], None
    for p, vectors in enumerate(clustered_chunks(n, DIM, SEED, chunk=PART_ROWS)):
        size, start = len(vectors), p * PART_ROWS
        rng = np.random.default_rng([SEED, p])
        codes = np.empty(size, np.uint8)
        bounds = np.round(np.cumsum((0, *LICENSE_SHARES)) * size).astype(int)
        order = rng.permutation(size)
        for code, (a, b) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
            codes[order[a:b]] = code
        tagged = np.zeros(size, bool)
        tagged[rng.permutation(size)[: round(RARE_SHARE * size)]] = True
        words = [rng.integers(0, len(w), size) for w in (ADJECTIVES, NOUNS, VERBS, PLACES)]
        captions = [
            f"a {RARE if t else ADJECTIVES[a]} {NOUNS[b]} {VERBS[c]} {PLACES[d]}"
            for t, a, b, c, d in zip(tagged, *words, strict=True)
        ]
        count = rng.integers(0, 1_000_000, size, dtype=np.int64)
        uris = [f"synthetic/{start + i:08d}.jpg" for i in range(size)]
        table = part_table(vectors, uris, captions)
        table = table.append_column("license", pa.array(np.array(LICENSES)[codes], pa.string()))
        table = table.append_column("views", pa.array(count, pa.int64()))
        write_table_atomic(run.fs, run.join(PARTS, f"part-{p:05d}.parquet"), table)
        licenses.append(codes)
        views.append(count)
        rare.append(tagged)
        if sample is None:
            sample = vectors[rng.choice(size, BIG_QUERIES, replace=False)]
    write_manifest(run, DIM, n)
    np.save(path / QUERY_FILE, make_queries(sample, seed=2024))
    np.savez(
        path / TRUTH_FILE,
        license=np.concatenate(licenses),
        views=np.concatenate(views),
        rare=np.concatenate(rare),
    )


def uri_row(uri: str) -> int:
    """The run row a synthetic uri names (synthetic/<row>.jpg)."""
    return int(uri.rsplit("/", 1)[1].split(".")[0])


# ---- child processes (each prints one JSON line) ------------------------------------------------


class FixedText:
    """A text encoder for the synthetic run: every text is the same vector (query vector 0)."""

    def __init__(self, vector: np.ndarray):
        self.vector = np.asarray(vector, np.float32)

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        return np.stack([self.vector] * len(texts))


def child_vlpipe(name: str, run: str) -> dict:
    from vlpipe.index.results import attach, hits_table, write_hits
    from vlpipe.index.search import Searcher

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
        from vlpipe.index import search as constants
    vectors = np.load(Path(run) / QUERY_FILE)
    parts = sorted(str(p) for p in (Path(run) / "parts").glob("part-*.parquet"))
    start = time.perf_counter()
    out: dict = {}
    if q.kind == "bulk":
        path = Path(run) / "hits-scan.parquet"
        tops, _, sizes = _scan(parts, vectors[:BIG_QUERIES], q.k)
        rows = np.concatenate([r for r, _ in tops])
        columns = ["image_id", "uri", "caption", *USER_COLUMNS, "embedding"]
        picked = _fetch(parts, sizes, rows, columns)
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
        tops, _, sizes = _scan(parts, vectors[:1], q.k, license=q.license)
        out["uris"] = _uris(parts, sizes, tops[0][0])
    elif q.kind == "keyword":  # no relevance ranking: the first k rows that hold the word
        _, matches, sizes = _scan(parts, None, q.k, word=RARE)
        out["uris"] = _uris(parts, sizes, matches[: q.k])
    else:  # hybrid: vlpipe's fusion over the scan's vector ranking and its word matches
        depth = max(q.k, constants.RRF_DEPTH)
        tops, matches, sizes = _scan(parts, vectors[:1], depth, word=RARE)
        share = len(matches) / sum(sizes)
        weight = constants.RARE_WEIGHT if share <= constants.RARE_SHARE else constants.COMMON_WEIGHT
        fused: dict[int, float] = {}
        for w, ranking in ((1.0, tops[0][0]), (weight, matches[:depth])):
            for rank, row in enumerate(ranking.tolist(), 1):
                fused[row] = fused.get(row, 0.0) + w / (constants.RRF_K + rank)
        best = sorted(fused, key=lambda r: -fused[r])[: q.k]
        out["uris"] = _uris(parts, sizes, np.array(best, np.int64))
    out["query_ms"] = _ms_since(start)
    out["max_rss_mb"] = _max_rss_mb()
    return out


def _scan(
    parts: list[str],
    queries: np.ndarray | None,
    k: int,
    license: str | None = None,
    word: str | None = None,
) -> tuple[list[tuple[np.ndarray, np.ndarray]], np.ndarray, list[int]]:
    """One pass over the parts: per query the top-k (rows, scores) by inner product, best first
    (only rows whose license is `license` when given); the rows whose caption holds `word`; and
    each part's row count. Rows are run rows (parts in name order)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    nq = 0 if queries is None else len(queries)
    if nq:
        queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    best = [(np.empty(0, np.int64), np.empty(0, np.float32)) for _ in range(nq)]
    matches, sizes, offset = [np.empty(0, np.int64)], [], 0
    columns = (["embedding"] if nq else []) + (["license"] if license else [])
    columns += ["caption"] if word else []
    for path in parts:
        table = pq.read_table(path, columns=columns)
        n = table.num_rows
        if nq:
            column = table.column("embedding").combine_chunks()
            emb = column.flatten().to_numpy(zero_copy_only=False).reshape(n, column.type.list_size)
            scores = emb.astype(np.float32) @ queries.T
            if license:
                keep = pc.fill_null(pc.equal(table.column("license"), license), False)
                scores[~keep.to_numpy(zero_copy_only=False)] = -np.inf
            take = min(k, n)
            for j in range(nq):
                s = scores[:, j]
                top = np.argpartition(-s, take - 1)[:take]
                top = top[np.isfinite(s[top])]
                rows = np.concatenate([best[j][0], top + offset])
                vals = np.concatenate([best[j][1], s[top]])
                if len(rows) > k:
                    keep_k = np.argpartition(-vals, k - 1)[:k]
                    rows, vals = rows[keep_k], vals[keep_k]
                best[j] = (rows, vals)
        if word:
            hold = pc.fill_null(pc.match_substring(table.column("caption"), word), False)
            matches.append(np.flatnonzero(hold.to_numpy(zero_copy_only=False)) + offset)
        sizes.append(n)
        offset += n
    ordered = []
    for rows, vals in best:
        order = np.argsort(-vals, kind="stable")
        ordered.append((rows[order], vals[order]))
    return ordered, np.concatenate(matches), sizes


def _uris(parts: list[str], sizes: list[int], rows: np.ndarray) -> list[str]:
    """The hits as a search returns them: uri and caption read for each (the uris kept)."""
    return _fetch(parts, sizes, rows, ["uri", "caption"]).column("uri").to_pylist()


def _fetch(parts: list[str], sizes: list[int], rows: np.ndarray, columns: list[str]):
    """`columns` of run rows `rows`, in that order, read from the parts that hold them."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = np.asarray(rows, np.int64)
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    part_of = np.searchsorted(offsets, rows, side="right") - 1
    pieces, order = [], []
    for p in np.unique(part_of):
        sel = np.flatnonzero(part_of == p)
        table = pq.read_table(parts[p], columns=columns)
        pieces.append(table.take(pa.array(rows[sel] - offsets[p])))
        order.append(sel)
    if not pieces:
        return pa.table({c: pa.array([], pa.string()) for c in columns})
    table = pa.concat_tables(pieces)
    return table.take(pa.array(np.argsort(np.concatenate(order), kind="stable")))


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


# ---- checks --------------------------------------------------------------------------------------


class Truth:
    """What the generated data holds, by run row."""

    def __init__(self, run: Path):
        with np.load(run / TRUTH_FILE) as data:
            self.license, self.views, self.rare = data["license"], data["views"], data["rare"]
        self.rows = len(self.license)

    def count(self, license: str) -> int:
        return int((self.license == LICENSES.index(license)).sum())


def check(name: str, output: dict, truth: Truth, run: Path) -> dict:
    """Hits returned and whether they are right; `problems` lists what is not."""
    q = QUERIES[name]
    if q.kind == "bulk":
        return _check_bulk(output, truth)
    rows = np.array([uri_row(u) for u in output["uris"]], np.int64)
    n_rare = int(truth.rare.sum())
    problems = []
    if q.kind == "vector":
        want = min(q.k, truth.count(q.license) if q.license else truth.rows)
        ok = bool(np.all(truth.license[rows] == LICENSES.index(q.license))) if q.license else None
        if ok is False:
            problems.append(f"a hit outside {q.where}")
    elif q.kind == "keyword":
        want = min(q.k, n_rare)
        ok = bool(np.all(truth.rare[rows]))
        if not ok:
            problems.append(f"a keyword hit without {RARE!r}")
    else:  # hybrid: the word's rows (weighted x4 as the word is rare) come first
        want = min(q.k, truth.rows)
        first = min(q.k, n_rare)
        ok = bool(np.all(truth.rare[rows[:first]])) and int(truth.rare[rows].sum()) == first
        if not ok:
            problems.append(f"hybrid top {first} are not all {RARE!r} rows")
    if len(rows) != want:
        problems.append(f"{len(rows)} hits, expected {want}")
    if len(set(rows.tolist())) != len(rows):
        problems.append("the same row twice")
    return {"hits": len(rows), "satisfied": ok, "rows": rows.tolist(), "problems": problems}


def _check_bulk(output: dict, truth: Truth) -> dict:
    """The written file: k hits per query, license/views as the parts hold them, embeddings."""
    import pyarrow.parquet as pq

    table = pq.read_table(output["file"], columns=["query", "uri", *USER_COLUMNS, "embedding"])
    rows = np.array([uri_row(u) for u in table.column("uri").to_pylist()], np.int64)
    licenses = np.array(table.column("license").to_pylist(), object)
    want = min(BIG_K, truth.rows)
    problems = []
    queries = table.column("query").to_pylist()
    per_query = {f"q{i}": queries.count(f"q{i}") for i in range(BIG_QUERIES)}
    if any(c != want for c in per_query.values()):
        problems.append(f"hits per query {sorted(set(per_query.values()))}, expected {want}")
    match = bool(
        np.all(licenses == np.array(LICENSES, object)[truth.license[rows]])
        and np.array_equal(table.column("views").to_numpy(), truth.views[rows])
    )
    if not match:
        problems.append("license/views in the file differ from the parts")
    emb = table.column("embedding")
    if emb.null_count or emb.type.list_size != DIM:
        problems.append("embeddings missing or of the wrong size")
    by_query: dict[str, set] = {}
    for label, row in zip(queries, rows.tolist(), strict=True):
        by_query.setdefault(label, set()).add(row)
    return {
        "hits": table.num_rows,
        "satisfied": match and not problems,
        "problems": problems,
        "sets": by_query,
        "file_mb": os.path.getsize(output["file"]) / 2**20,
    }


def agreement(mine: dict, theirs: dict, kind: str) -> float | None:
    """Share of the scan's hits vlpipe returns too (exact top-k by the stored vectors)."""
    if kind == "bulk":
        shares = [len(mine["sets"][q] & s) / len(s) for q, s in theirs["sets"].items() if s]
        return statistics.mean(shares) if shares else None
    if kind != "vector" or not theirs["rows"]:
        return None  # keyword and hybrid: the scan has no BM25 ranking to agree with
    return len(set(mine["rows"]) & set(theirs["rows"])) / len(theirs["rows"])


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


def run(args) -> dict:
    n = args.rows or (QUICK_ROWS if args.quick else ROWS)
    report = Report(NAME, TITLE)
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.search", description=TITLE)
    parser.add_argument("--rows", type=int, help=f"rows in the run [default {ROWS:,}]")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_ROWS:,} rows")
    parser.add_argument("--rounds", type=int, default=ROUNDS, help="processes per query")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        contender, name, path = args.child
        print(json.dumps(CHILDREN[contender](name, path)))
        return 0
    from bench.report import run_and_publish

    return run_and_publish(NAME, lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
