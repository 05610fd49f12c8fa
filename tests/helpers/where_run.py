"""A run for the search filter tests (tests/test_search_where.py): vlpipe's columns and user
columns of every type, in three parts (the last without some user columns), with duplicated
image ids whose later copies hold other values; and the same rows in SQLite, an oracle with SQL's
NULL logic for which rows a filter keeps (tests only: vlpipe never hands a filter to SQL).
"""

from __future__ import annotations

import sqlite3
from datetime import date, datetime, timedelta, timezone

import numpy as np
import pyarrow as pa

from bench.synthetic import clustered_vectors
from tests.helpers.runs import write_manifest, write_part
from vlpipe.rundir import RunDir
from vlpipe.schema import image_id

DIM = 32
PARTS_ROWS = (1800, 1800, 400)
DUPLICATES = 200  # the second part starts with copies of the first part's first 200 uris
CAPTIONS = ["a dog on grass", "a cat", "two dogs", "it's a dog", "100% cotton", "a car", None]
USER = {
    "license": pa.string(),
    "score": pa.float64(),
    "views": pa.int64(),
    "bucket": pa.int32(),
    "nsfw": pa.bool_(),
    "crawled": pa.timestamp("us", tz="UTC"),
    "day": pa.date32(),
    "tags": pa.list_(pa.string()),
    "source.kind": pa.string(),
    "Odd Name": pa.string(),
}


def values(n: int, rng: np.random.Generator) -> dict[str, list]:
    """Random column values (Python lists, None for null) for n rows."""

    def maybe(items, p_null):
        return [None if rng.random() < p_null else v for v in items]

    start = datetime(2024, 1, 1, tzinfo=timezone.utc)
    text = maybe([f"alt {i}" for i in range(n)], 0.3)
    return {
        "orig_width": rng.integers(100, 2000, n).tolist(),
        "format": rng.choice(["JPEG", "PNG", "WEBP", "GIF"], n).tolist(),
        "caption": [CAPTIONS[i] for i in rng.integers(0, len(CAPTIONS), n)],
        "text": text,
        "text_score": [None if t is None else float(rng.random()) for t in text],
        "license": maybe(rng.choice(["cc-by", "cc0", "proprietary"], n).tolist(), 0.1),
        "score": maybe(rng.random(n).round(3).tolist(), 0.05),
        "views": rng.integers(0, 10_000, n).tolist(),
        "bucket": rng.integers(0, 1000, n).tolist(),
        "nsfw": maybe((rng.random(n) < 0.2).tolist(), 0.1),
        "crawled": [start + timedelta(minutes=int(m)) for m in rng.integers(0, 86_400, n)],
        "day": [date(2024, 1, 1) + timedelta(days=int(d)) for d in rng.integers(0, 60, n)],
        "tags": maybe([["a", "b"][: int(t)] for t in rng.integers(0, 3, n)], 0.2),
        "source.kind": rng.choice(["web", "book"], n).tolist(),
        "Odd Name": rng.choice(["x", "y"], n).tolist(),
    }


def write_run(out: str) -> dict[str, dict]:
    """Three parts (the last without license and tags); the rows each image id first has."""
    run = RunDir(out)
    x = clustered_vectors(sum(PARTS_ROWS), DIM, seed=3)
    rng = np.random.default_rng(5)
    first: dict[str, dict] = {}
    start = 0
    for p, n in enumerate(PARTS_ROWS):
        uris = [f"img/{start + i:05d}.jpg" for i in range(n)]
        if p == 1:
            uris[:DUPLICATES] = [f"img/{i:05d}.jpg" for i in range(DUPLICATES)]
        cols = values(n, rng)
        given = {k: cols[k] for k in ("orig_width", "format", "text", "text_score")}
        user = {k: t for k, t in USER.items() if p < 2 or k not in ("license", "tags")}
        given |= {name: pa.array(cols[name], kind) for name, kind in user.items()}
        name = f"part-{p:05d}.parquet"
        write_part(run, name, x[start : start + n], uris, cols["caption"], columns=given)
        for i, uri in enumerate(uris):
            row = {k: v[i] for k, v in cols.items() if k in given or k == "caption"}
            first.setdefault(image_id(uri), {**row, "uri": uri})
        start += n
    write_manifest(run, DIM, sum(PARTS_ROWS))
    return first


def sqlite_oracle(rows: list[dict]) -> sqlite3.Connection:
    """The rows in index order (rowid - 1 = index row) in SQLite, as an oracle for filters."""
    db = sqlite3.connect(":memory:")
    names = [n for n in rows[0] if n != "uri"]
    db.execute(f"CREATE TABLE t ({', '.join(quoted(n) for n in names)})")

    def cell(v):
        if isinstance(v, datetime):
            return v.strftime("%Y-%m-%dT%H:%M:%S")
        return v.isoformat() if isinstance(v, date) else ("x" if isinstance(v, list) else v)

    db.executemany(
        f"INSERT INTO t VALUES ({', '.join('?' * len(names))})",
        [[cell(r.get(n)) for n in names] for r in rows],
    )
    db.execute("PRAGMA case_sensitive_like = ON")
    return db


def quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def oracle_rows(db: sqlite3.Connection, condition: str) -> np.ndarray:
    """Index rows (rowid - 1) of the rows that satisfy `condition` in SQLite."""
    got = db.execute(f"SELECT rowid - 1 FROM t WHERE {condition} ORDER BY rowid")
    return np.array([r[0] for r in got], np.int64)
