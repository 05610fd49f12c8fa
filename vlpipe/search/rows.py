"""Columns of index rows, read from the run's parts: only the row groups holding them, only the
columns asked for.

The id map records, per vector, its part file and row (`part`, `row`: "locations" in meta.json),
so a search that returns user columns, embeddings or stored thumbnails for its hits reads a few
row groups, however large the run: never a scan of whole columns.
"""

from __future__ import annotations

import bisect
import posixpath
import threading
from collections import defaultdict
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from vlpipe.errors import VlpipeError
from vlpipe.index.store import LOCATION_COLUMNS, IndexDir
from vlpipe.rundir import PARTS

#: columns a search can hand back besides its own (rank, score, image_id, uri, caption)
NOT_RETURNED = frozenset({"thumbnail"})


class RowReader:
    """Reads columns of index rows (id map row numbers) from the parts they came from."""

    def __init__(self, store: IndexDir, meta: dict):
        if not meta.get("locations"):
            raise VlpipeError(
                f"the index at {store.folder} does not record where its rows are (built by an"
                " older vlpipe): rebuild it with `vlpipe index <run dir> --rebuild`"
            )
        self.store, self.meta = store, meta
        self.parts_dir = store.run_path(PARTS)
        self._locations: pa.Table | None = None
        self._starts: dict[str, list[int]] = {}
        self._schema: pa.Schema | None = None
        self._lock = threading.Lock()

    def schema(self) -> pa.Schema:
        """The parts' columns (of the first indexed part: every part of a run shares them)."""
        if self._schema is None:
            part = self._load().column("part")[0].as_py()
            with self.store.fs.open(posixpath.join(self.parts_dir, part), "rb") as f:
                self._schema = pq.ParquetFile(f).schema_arrow
        return self._schema

    def check_columns(self, columns: Sequence[str]) -> None:
        known = set(self.schema().names) - NOT_RETURNED
        unknown = [c for c in columns if c not in known]
        if unknown:
            raise VlpipeError(
                f"unknown column {unknown[0]!r}: the run's columns are {', '.join(sorted(known))}"
            )

    def read(self, rows: Sequence[int], columns: Sequence[str]) -> list[dict]:
        """One dict of `columns` per row of `rows`, in that order (embeddings as float32
        arrays); a column a part lacks is None."""
        out: list[dict | None] = [None] * len(rows)
        locations = self._load()
        parts = locations.column("part").take(pa.array(rows, pa.int64())).to_pylist()
        offsets = locations.column("row").take(pa.array(rows, pa.int64())).to_pylist()
        wanted: dict[str, list[tuple[int, int]]] = defaultdict(list)
        for i, (part, offset) in enumerate(zip(parts, offsets, strict=True)):
            wanted[part].append((i, offset))
        for part, items in wanted.items():
            for i, values in self._read_part(part, items, list(columns)):
                out[i] = values
        return [o or dict.fromkeys(columns) for o in out]

    def _read_part(self, part: str, items: list[tuple[int, int]], columns: list[str]):
        with self.store.fs.open(posixpath.join(self.parts_dir, part), "rb") as f:
            pf = pq.ParquetFile(f)
            present = [c for c in columns if c in pf.schema_arrow.names]
            if not present:  # nothing to read: the part has none of these columns
                yield from ((i, dict.fromkeys(columns)) for i, _ in items)
                return
            starts = self._row_group_starts(part, pf.metadata)
            by_group: dict[int, list[tuple[int, int]]] = defaultdict(list)
            for i, offset in items:
                group = bisect.bisect_right(starts, offset) - 1
                by_group[group].append((i, offset - starts[group]))
            for group, members in by_group.items():
                table = pf.read_row_group(group, columns=present)
                picked = table.take(pa.array([o for _, o in members], pa.int64()))
                for (i, _), row in zip(members, _rows(picked, columns), strict=True):
                    yield i, row

    def _row_group_starts(self, part: str, metadata: pq.FileMetaData) -> list[int]:
        if part not in self._starts:
            sizes = [metadata.row_group(g).num_rows for g in range(metadata.num_row_groups)]
            self._starts[part] = [int(s) for s in np.concatenate([[0], np.cumsum(sizes)[:-1]])]
        return self._starts[part]

    def _load(self) -> pa.Table:
        """The id map's location columns, read once (a part name is dictionary-encoded: a
        handful of names repeated over every row)."""
        with self._lock:
            if self._locations is None:
                table = self.store.read_idmap(self.meta, LOCATION_COLUMNS)
                where = table.schema.get_field_index("part")
                self._locations = table.set_column(
                    where, "part", table.column("part").dictionary_encode()
                )
            return self._locations


def _rows(table: pa.Table, columns: list[str]) -> list[dict]:
    """Plain Python values; the embedding as a float32 array."""
    data = {}
    for name in columns:
        if name not in table.column_names:
            data[name] = [None] * table.num_rows
        elif name == "embedding" and pa.types.is_fixed_size_list(table.schema.field(name).type):
            flat = table.column(name).combine_chunks()
            matrix = flat.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
            data[name] = list(matrix.reshape(table.num_rows, -1))
        else:
            data[name] = table.column(name).to_pylist()
    return [{name: data[name][i] for name in columns} for i in range(table.num_rows)]
