"""The baseline of bench/search.py: answer a query by reading the parts, no index (a pass over
the embedding column with NumPy top-k, a substring match over captions, then the hits' columns
read from the parts that hold them)."""

from __future__ import annotations

import numpy as np


def scan(
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


def uris_of(parts: list[str], sizes: list[int], rows: np.ndarray) -> list[str]:
    """The hits as a search returns them: uri and caption read for each (the uris kept)."""
    return fetch(parts, sizes, rows, ["uri", "caption"]).column("uri").to_pylist()


def fetch(parts: list[str], sizes: list[int], rows: np.ndarray, columns: list[str]):
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
