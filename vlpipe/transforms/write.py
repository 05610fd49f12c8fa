"""Build a shard's result and failure tables and write them atomically.

A part's name is derived from the ids of the shard it came from, so the same shard always maps to
the same file name, and a rerun after a crash can never leave two copies of one shard behind.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from vlpipe.rundir import FAILED, PARTS, RunDir, write_table_atomic
from vlpipe.schema import FAILED_SCHEMA, result_schema


def part_name(image_ids: Sequence[str]) -> str:
    digest = hashlib.sha1("\n".join(sorted(image_ids)).encode()).hexdigest()[:20]
    return f"part-{digest}.parquet"


def results_table(rows: list[dict], dim: int, float16: bool = True) -> pa.Table:
    """Rows (image_id, uri, width, height, caption, embedding, text, text_score) to Arrow."""
    schema = result_schema(dim, float16)
    value_type = schema.field("embedding").type.value_type
    matrix = np.stack([r["embedding"] for r in rows]) if rows else np.zeros((0, dim))
    flat = pa.array(matrix.astype(np.float16 if float16 else np.float32).ravel(), value_type)
    columns = {
        name: pa.array([r[name] for r in rows], schema.field(name).type)
        for name in schema.names
        if name != "embedding"
    }
    columns["embedding"] = pa.FixedSizeListArray.from_arrays(flat, dim)
    return pa.table([columns[n] for n in schema.names], schema=schema)


def failures_table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=FAILED_SCHEMA)


def write_shard(
    output: str, name: str, results: pa.Table, failures: pa.Table
) -> tuple[str | None, str | None]:
    """Failures first, then results: each file is atomic, and either order is safe on resume."""
    run = RunDir(output)
    written = [None, None]
    for i, (sub, table) in enumerate(((FAILED, failures), (PARTS, results))):
        if table.num_rows:
            path = run.join(sub, name)
            write_table_atomic(run.fs, path, table)
            written[i] = path
    return written[1], written[0]


def failure_row(image_id: str, uri: str, stage: str, reason: str, error: str) -> dict:
    error = " ".join(str(error).split())[:500]  # one readable line
    return {"image_id": image_id, "uri": uri, "stage": stage, "reason": reason, "error": error}


__all__ = ["failure_row", "failures_table", "part_name", "results_table", "write_shard"]
