"""What dedup writes: OUT/dedup/clusters.parquet (one row per run row), summary.json and the
keep list."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from vlpipe.dedup.graph import METHODS, Clusters
from vlpipe.rundir import CLUSTERS, DEDUP, RunDir, write_atomic
from vlpipe.storage import open_for_write

__all__ = [
    "CLUSTER_SCHEMA",
    "SUMMARY",
    "histogram",
    "read_summary",
    "write_clusters",
    "write_keep_list",
    "write_summary",
]

SUMMARY = "summary.json"
SLICE_ROWS = 1_000_000  # rows of Arrow strings made at a time while writing
CLUSTER_SCHEMA = pa.schema(
    [
        ("image_id", pa.string()),
        ("cluster_id", pa.string()),  # the representative's image_id
        ("is_representative", pa.bool_()),  # True for rows alone, too: they are kept
        ("cluster_size", pa.int32()),
        ("nearest_id", pa.string()),  # nearest other row (embedding cosine, or phash bits)
        ("similarity", pa.float32()),  # to nearest_id: cosine, or 1 - hamming/64 for phash
        ("method", pa.string()),  # how the row joined its cluster: sha256, phash, embedding
    ]
)


def write_clusters(run: RunDir, ids: pa.ChunkedArray, c: Clusters, nearest, nearest_sim) -> None:
    """Written in slices so at 10M rows only a slice's strings exist at a time."""
    methods = pa.array(METHODS)
    with (
        open_for_write(run.fs, run.join(CLUSTERS)) as f,
        pq.ParquetWriter(f, CLUSTER_SCHEMA, compression="zstd") as w,
    ):
        for start in range(0, len(c.component), SLICE_ROWS):
            s = slice(start, start + SLICE_ROWS)
            near = nearest[s]
            has = near >= 0
            how = c.how[s]
            table = pa.table(
                {
                    "image_id": ids.slice(start, len(near)),
                    "cluster_id": ids.take(c.representative[s]),
                    "is_representative": c.is_representative[s],
                    "cluster_size": c.size[s],
                    "nearest_id": pc.if_else(has, ids.take(np.where(has, near, 0)), None),
                    "similarity": pa.array(nearest_sim[s], mask=~has, type=pa.float32()),
                    "method": methods.take(pa.array(how, mask=how < 0, type=pa.int8())),
                },
                schema=CLUSTER_SCHEMA,
            )
            w.write_table(table)


def write_summary(run: RunDir, summary: dict) -> None:
    write_atomic(run.fs, run.join(DEDUP, SUMMARY), json.dumps(summary, indent=1).encode())


def read_summary(run: RunDir) -> dict | None:
    try:
        blob = run.read(DEDUP, SUMMARY)  # one GET, none of the HEADs of a plain cat_file
        return json.loads(blob) if blob is not None else None
    except ValueError:
        return None


def write_keep_list(run: RunDir, path: str) -> int:
    """The image_ids to keep (representatives and rows alone), one per line; returns how many."""
    import fsspec

    kept = 0
    with fsspec.open(path, "w") as out:
        for batch in pq.ParquetFile(run.fs.open(run.join(CLUSTERS), "rb")).iter_batches(
            columns=["image_id", "is_representative"], batch_size=SLICE_ROWS
        ):
            ids = batch.column(0).filter(batch.column(1)).to_pylist()
            out.writelines(f"{i}\n" for i in ids)
            kept += len(ids)
    return kept


def histogram(nearest_sim: np.ndarray, bins: int = 50) -> dict:
    """Counts of each row's nearest-neighbour similarity in equal bins over [0, 1]."""
    values = np.clip(nearest_sim[np.isfinite(nearest_sim)], 0.0, 1.0)
    counts, edges = np.histogram(values, bins=bins, range=(0.0, 1.0))
    return {"edges": [round(float(e), 4) for e in edges], "counts": counts.tolist()}
