"""The queries bench/search.py asks, and the checks every answer passes: filtered hits
satisfy their filter, k hits come back, the rare word's rows are the keyword and hybrid hits,
the bulk file's columns match the parts."""

from __future__ import annotations

import os
import statistics
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.search_data import BIG_QUERIES, DIM, LICENSES, RARE, USER_COLUMNS, Truth, uri_row

K = 10
BIG_K = 10_000


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
