"""The per-row signals dedup needs, read from the run's parts in one streaming pass: only the
id, hash and size columns (never uri, caption, thumbnails or user columns), held as NumPy and
Arrow arrays; embeddings are streamed separately (vlpipe.dedup.neighbours) and never all held.

Rows are numbered in the order of `parts` (the state's order: parts of an earlier dedup first),
so row numbers stay valid when a rerun adds parts.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from vlpipe.rundir import PARTS, RunDir

BATCH_ROWS = 65536
ZERO_SHA = "0" * 64
SIGNAL_COLUMNS = ["image_id", "orig_width", "orig_height", "bytes", "phash", "sha256"]


@dataclass
class Signals:
    """Row-aligned arrays for every row of `parts` (a part's rows are `counts[i]` long)."""

    parts: list[str]
    counts: list[int]
    image_id: pa.ChunkedArray
    area: np.ndarray  # orig_width * orig_height, int64 (0 when unknown)
    size: np.ndarray  # bytes read, int64
    phash: np.ndarray  # uint64
    has_phash: np.ndarray  # bool: null phash (older parts) never links
    sha: np.ndarray  # (n, 2) uint64: the first 128 bits of the sha256, 0 when unknown

    @property
    def n(self) -> int:
        return len(self.area)


def read_signals(run: RunDir, parts: list[str]) -> Signals:
    """One pass over `parts` (names in parts/), reading only SIGNAL_COLUMNS."""
    ids, area, size, phash, has_phash, sha, counts = [], [], [], [], [], [], []
    for name in parts:
        rows = 0
        for batch in iter_part(run, name, SIGNAL_COLUMNS):
            rows += len(batch)
            ids.append(batch.column("image_id"))
            w = _ints(batch.column("orig_width"))
            h = _ints(batch.column("orig_height"))
            area.append(w * h)
            size.append(_ints(batch.column("bytes")))
            ph = batch.column("phash")
            phash.append(_ints(ph).astype(np.uint64))
            has_phash.append(np.asarray(ph.is_valid()))
            sha.append(sha_prefix(batch.column("sha256")))
        counts.append(rows)
    return Signals(
        parts=list(parts),
        counts=counts,
        image_id=pa.chunked_array(ids, pa.string()),
        area=_cat(area, np.int64),
        size=_cat(size, np.int64),
        phash=_cat(phash, np.uint64),
        has_phash=_cat(has_phash, bool),
        sha=np.concatenate(sha) if sha else np.zeros((0, 2), np.uint64),
    )


def iter_part(run: RunDir, name: str, columns: list[str]) -> Iterator[pa.RecordBatch]:
    return run.iter_part_batches(run.join(PARTS, name), columns, BATCH_ROWS)


def part_rows(run: RunDir, names: list[str]) -> dict[str, int]:
    """Row counts from the footers (no data read)."""
    out = {}
    for name in names:
        pf = run.open_part(run.join(PARTS, name))
        out[name] = pf.metadata.num_rows if pf is not None else 0
    return out


def sha_prefix(column: pa.Array) -> np.ndarray:
    """(n, 2) uint64 from hex sha256 strings: 128 bits, so two different files share a value with
    probability about 2^-128 per pair; a null value becomes 0 (never linked)."""
    if len(column) == 0:
        return np.zeros((0, 2), np.uint64)
    head = pc.utf8_slice_codeunits(pc.fill_null(column, ZERO_SHA), 0, 32)
    raw = bytes.fromhex("".join(head.to_pylist()))
    return np.frombuffer(raw, dtype=">u8").astype(np.uint64).reshape(-1, 2)


def _ints(column: pa.Array) -> np.ndarray:
    return np.asarray(pc.fill_null(column, 0).to_numpy(zero_copy_only=False)).astype(np.int64)


def _cat(chunks: list[np.ndarray], dtype) -> np.ndarray:
    return np.concatenate(chunks).astype(dtype) if chunks else np.zeros(0, dtype)
