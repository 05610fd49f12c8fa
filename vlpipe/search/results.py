"""Hits with more than rank, score and uri: the run's columns and embeddings, and many queries'
hits written as one Parquet file.

Columns and embeddings come from the parts through the id map's locations (vlpipe.search.rows):
a search with k=10,000 reads the row groups its hits live in, never whole columns.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from vlpipe.errors import VlpipeError
from vlpipe.search.rows import RowReader

__all__ = ["MAX_K_OUT", "attach", "hits_table", "jsonable", "write_hits"]

#: hits per query a `--output` file or a page of the API may ask for
MAX_K_OUT = 10_000


def attach(
    reader: RowReader,
    results: list[list],
    columns: Sequence[str] = (),
    embeddings: bool = False,
) -> None:
    """Fill `hit.columns` (the asked columns) and `hit.embedding` (the stored vector) of every
    hit, in one read per row group that holds some."""
    columns = [c for c in columns if c not in ("embedding",)]
    wanted = list(columns) + (["embedding"] if embeddings else [])
    if not wanted:
        return
    reader.check_columns(wanted)
    hits = [h for hits in results for h in hits]
    values = reader.read([h.row for h in hits], wanted)
    for hit, row in zip(hits, values, strict=True):
        hit.columns = {c: row[c] for c in columns}
        if embeddings:
            hit.embedding = row["embedding"]


def hits_table(labels: Sequence[str], results: list[list], columns: Sequence[str] = ()) -> pa.Table:
    """One row per hit: query, rank, score, image_id, uri, caption, found_by, duplicates (with
    dedup: the other copies of the hit's cluster), the asked columns
    (typed as in the parts) and the embedding when it was attached."""
    rows = [(label, h) for label, hits in zip(labels, results, strict=True) for h in hits]
    data = {
        "query": [label for label, _ in rows],
        "rank": pa.array([h.rank for _, h in rows], pa.int32()),
        "score": pa.array([h.score for _, h in rows], pa.float32()),
        "image_id": [h.image_id for _, h in rows],
        "uri": [h.uri for _, h in rows],
        "caption": [h.caption for _, h in rows],
        "found_by": [getattr(h, "found_by", "vector") for _, h in rows],
    }
    if rows and all(getattr(h, "duplicates", None) is not None for _, h in rows):
        data["duplicates"] = pa.array([h.duplicates for _, h in rows], pa.int32())
    for name in columns:
        data[name] = _column([(h.columns or {}).get(name) for _, h in rows])
    embedded = [h.embedding for _, h in rows if getattr(h, "embedding", None) is not None]
    if rows and len(embedded) == len(rows):
        matrix = np.stack(embedded).astype(np.float32)
        flat = pa.array(matrix.ravel(), pa.float32())
        data["embedding"] = pa.FixedSizeListArray.from_arrays(flat, matrix.shape[1])
    return pa.table(data)


def _column(values: list) -> pa.Array:
    try:
        return pa.array(values)
    except (pa.ArrowException, TypeError, ValueError):
        return pa.array([None if v is None else str(v) for v in values])


def write_hits(path: str, table: pa.Table) -> None:
    """The hits as one Parquet file, written to a temp name and renamed."""
    import fsspec

    from vlpipe.rundir import write_table_atomic

    try:
        fs, target = fsspec.core.url_to_fs(path)
        write_table_atomic(fs, target, table)
    except OSError as exc:
        raise VlpipeError(f"cannot write {path}: {exc.strerror or exc}") from None


def jsonable(value):
    """A run column's value as JSON: timestamps and dates as ISO text, bytes left out."""
    import datetime as dt

    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat()
    if isinstance(value, (bytes, bytearray)):
        return None
    if isinstance(value, list):
        return [jsonable(v) for v in value]
    return value
