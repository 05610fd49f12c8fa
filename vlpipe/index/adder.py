"""Adding a run's record batches to a FAISS index: valid vectors only, each image_id once.

Split out of build.py, which decides what to build and which parts to read; this module is the
per-batch work (Arrow buffers to NumPy, never Python objects per row) and the id map it grows.
"""

from __future__ import annotations

import posixpath

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from vlpipe.index.store import IDMAP_COLUMNS, TEXT_COLUMN

#: text is the row's alt text (null where the source had none): the keyword index reads it
IDMAP_SCHEMA = pa.schema(
    [("image_id", pa.string()), ("uri", pa.string()), ("caption", pa.string())]
).append(pa.field(TEXT_COLUMN, pa.string()))
#: the id map of a run whose parts store thumbnails: each vector's part file name and row in it
LOCATED_SCHEMA = IDMAP_SCHEMA.append(pa.field("part", pa.string())).append(
    pa.field("row", pa.int64())
)


class Adder:
    """Adds record batches to an index: drops invalid rows and ids already indexed. With
    `locate`, the id map also records each vector's part and row (vlpipe.index.store)."""

    def __init__(
        self, index, gt, ids: pa.ChunkedArray | None, dim: int, idmap=None, locate: bool = False
    ):
        self.index, self.gt, self.dim = index, gt, dim
        self.schema = LOCATED_SCHEMA if locate else IDMAP_SCHEMA
        self._seen = SeenIds(id_bytes(ids) if ids is not None else None)
        self._tables = [idmap.select(self.schema.names)] if idmap is not None else []
        self.added = self.duplicates = self.invalid = 0

    def add(self, batch: pa.RecordBatch, part: str = "", first_row: int = 0) -> None:
        """Add a batch that starts at row `first_row` of the part file named `part`."""
        import faiss

        vectors, valid = valid_vectors(batch.column("embedding"), self.dim)
        id_col = batch.column("image_id")
        valid &= np.asarray(id_col.is_valid())
        self.invalid += int((~valid).sum())
        keep = valid & self._unseen(id_bytes(id_col), valid)
        self.duplicates += int((valid & ~keep).sum())
        if not keep.any():
            return
        vectors = np.ascontiguousarray(vectors[keep])
        faiss.normalize_L2(vectors)
        first = self.index.ntotal
        self.index.add(vectors)
        if self.gt is not None:
            self.gt.add(vectors, first)
        rows = pa.Table.from_batches([batch.select(IDMAP_COLUMNS).filter(pa.array(keep))])
        text = batch.column(TEXT_COLUMN) if TEXT_COLUMN in batch.schema.names else None
        text = pa.nulls(len(keep), pa.string()) if text is None else text  # parts without one
        rows = rows.append_column(TEXT_COLUMN, text.filter(pa.array(keep)))
        if self.schema is LOCATED_SCHEMA:
            rows = rows.append_column("part", pa.repeat(pa.scalar(part, pa.string()), len(rows)))
            rows = rows.append_column("row", pa.array(np.flatnonzero(keep) + first_row, pa.int64()))
        self._tables.append(rows.cast(self.schema))
        self.added += len(vectors)

    def _unseen(self, ids: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """First occurrences of ids not indexed before; records them as seen."""
        keep = np.zeros(len(ids), dtype=bool)
        rows = np.flatnonzero(valid)
        _, first = np.unique(ids[rows], return_index=True)
        keep[rows[first]] = True
        keep &= ~self._seen.contains(ids)
        self._seen.add(ids[keep])
        return keep

    def idmap(self) -> pa.Table:
        if not self._tables:
            return self.schema.empty_table()
        return pa.concat_tables(self._tables).combine_chunks()

    def report(self, corrupt: list[str]) -> dict:
        return {
            "added": self.added,
            "duplicates_skipped": self.duplicates,
            "invalid_skipped": self.invalid,
            "corrupt_parts": sorted({posixpath.basename(p) for p in corrupt}),
        }


class SeenIds:
    """Ids already indexed, as sorted runs of fixed-width bytes merged now and then: a batch
    costs a few binary searches, not a re-sort of every id seen so far."""

    MAX_RUNS = 16

    def __init__(self, ids: np.ndarray | None):
        self.runs = [np.unique(ids)] if ids is not None and len(ids) else []

    def contains(self, ids: np.ndarray) -> np.ndarray:
        found = np.zeros(len(ids), dtype=bool)
        for run in self.runs:
            pos = np.minimum(np.searchsorted(run, ids), len(run) - 1)
            found |= run[pos] == ids
        return found

    def add(self, ids: np.ndarray) -> None:
        """Ids not seen before (and unique among themselves)."""
        if len(ids):
            self.runs.append(np.sort(ids))
        if len(self.runs) > self.MAX_RUNS:
            self.runs = [np.sort(np.concatenate(self.runs))]


def valid_vectors(column: pa.Array, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows, dim) float32 from a fixed-size-list column, and which rows are usable.

    Null rows, non-finite values and zero vectors are marked unusable.
    """
    values = column.values.slice(column.offset * dim, len(column) * dim)
    vectors = values.to_numpy(zero_copy_only=False).astype(np.float32).reshape(-1, dim)
    squared_norms = np.einsum("ij,ij->i", vectors, vectors)  # NaN or inf when any value is
    valid = np.isfinite(squared_norms) & (squared_norms > 0) & np.asarray(column.is_valid())
    return vectors, valid


def id_bytes(column) -> np.ndarray:
    """image_id strings as a fixed-width bytes array (nulls become b'')."""
    raw = pc.cast(pc.fill_null(column, ""), pa.binary()).to_numpy(zero_copy_only=False)
    return np.asarray(raw, dtype="S") if len(raw) else np.array([], dtype="S1")
