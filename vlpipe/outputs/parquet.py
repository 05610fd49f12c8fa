"""Parquet parts, the output every run writes: a shard's result and failure tables, written
atomically (resume, the index, search and dedup read only these).

A part's name is derived from the spec it came from and the ids it holds, so a Beam retry of the
same spec rewrites the same files, and a part that no marker names is known to be the leftover of
an interrupted spec.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from vlpipe.outputs.base import OutputFormat
from vlpipe.rundir import FAILED, PARTS, RunDir, write_table_atomic
from vlpipe.schema import FAILED_SCHEMA, result_schema

PART_NAME = re.compile(r"^part-[0-9a-f]{20}-[0-9a-f]{12}\.parquet$")


def part_name(key: str, image_ids: Sequence[str]) -> str:
    """The spec's key and a digest of the chunk's ids: a Beam retry of a chunk rewrites the same
    file, and a redo that skips what an earlier attempt wrote never overwrites that part."""
    digest = hashlib.sha1("\n".join(sorted(image_ids)).encode()).hexdigest()[:12]
    return f"part-{key}-{digest}.parquet"


def is_part_name(name: str) -> bool:
    """A name vlpipe gives its parts (anything else in parts/ is not of this run's making)."""
    return bool(PART_NAME.match(name))


def results_table(
    rows: list[dict],
    dim: int,
    float16: bool = True,
    thumbnails: bool = False,
    extra_fields: list[pa.Field] | None = None,
    faces: bool = False,
) -> pa.Table:
    """Rows to Arrow: vlpipe's columns (an all-null embedding when `dim` is 0, a captions-only
    run), then the sources' own columns, typed as the source typed them where it did."""
    extra = _extra_columns(rows, extra_fields or [])
    schema = result_schema(dim, float16, embeddings=dim > 0, thumbnails=thumbnails,
                           extra=[c.field for c in extra], faces=faces)  # fmt: skip
    columns = {
        name: pa.array([r.get(name) for r in rows], schema.field(name).type)
        for name in schema.names
        if name != "embedding" and name not in {c.field.name for c in extra}
    }
    columns["embedding"] = _embeddings(rows, dim, float16)
    columns.update({c.field.name: c.array for c in extra})
    return pa.table([columns[n] for n in schema.names], schema=schema)


def _embeddings(rows: list[dict], dim: int, float16: bool) -> pa.Array:
    if dim == 0:
        return pa.nulls(len(rows))
    value_type = pa.float16() if float16 else pa.float32()
    matrix = np.stack([r["embedding"] for r in rows]) if rows else np.zeros((0, dim))
    flat = pa.array(matrix.astype(np.float16 if float16 else np.float32).ravel(), value_type)
    return pa.FixedSizeListArray.from_arrays(flat, dim)


@dataclass
class _Column:
    field: pa.Field
    array: pa.Array


def _extra_columns(rows: list[dict], fields: list[pa.Field]) -> list[_Column]:
    """The user's columns of these rows: the source's Arrow type where it gave one, else
    inferred; a column whose values share no type is stored as text (JSON where not a str)."""
    typed = {f.name: f.type for f in fields}
    names = list(dict.fromkeys(k for r in rows for k in (r.get("extra") or {})))
    out = []
    for name in names:
        values = [(r.get("extra") or {}).get(name) for r in rows]
        try:
            array = pa.array(values, typed.get(name))
        except (pa.ArrowException, TypeError, ValueError):
            array = pa.array([v if v is None or isinstance(v, str) else _text(v) for v in values])
        out.append(_Column(pa.field(name, array.type), array))
    return out


def _text(value) -> str:
    try:
        return json.dumps(value, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        return str(value)


def failures_table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=FAILED_SCHEMA)


def write_chunk(run: RunDir, name: str, results: pa.Table, failures: pa.Table) -> dict[str, dict]:
    """A chunk's two parts (each only if it has rows), atomically; their sizes by folder, for
    the done marker (a rerun checks them against a listing instead of opening every part)."""
    written: dict[str, dict] = {PARTS: {}, FAILED: {}}
    for sub, table in ((FAILED, failures), (PARTS, results)):
        if table.num_rows:
            written[sub][name] = write_table_atomic(run.fs, run.join(sub, name), table)
    return written


def failure_row(image_id: str, uri: str, stage: str, reason: str, error: str) -> dict:
    error = " ".join(str(error).split())[:500]  # one readable line
    return {"image_id": image_id, "uri": uri, "stage": stage, "reason": reason, "error": error}


#: the default: the parts alone (the other formats add their files beside them)
PARQUET = OutputFormat(name="parquet", help="Parquet parts only (every format writes them)")


__all__ = ["failure_row", "failures_table", "part_name", "results_table", "write_chunk"]
