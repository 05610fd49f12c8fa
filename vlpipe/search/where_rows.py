"""Which index rows a search filter (vlpipe.search.where) keeps, evaluated over the run's parts.

Only the filter's columns are read (Parquet column projection), batch by batch, so a filter on
`license` over a run of 1M rows reads one small column, never embeddings or thumbnails.
Run rows become index rows (id map rows) in one of two ways:

* by location, when the id map records each vector's part and row ("locations" in meta.json,
  every index built by this vlpipe): exact, and nothing but the filter's columns is read;
* by image_id otherwise (older id maps): image_id is read too and looked up in the id map's ids
  (sorted fixed-width bytes, one binary search per row). An id the run holds more than once
  counts where it occurs first, as the index build keeps the first (the first with a valid
  embedding: an invalid earlier copy is the one case where this differs from the location).

An open index keeps a few recent filters' rows (`RowFilter`), keyed by filter text and index
generation, so paging through results or changing k does not re-read the parts.
"""

from __future__ import annotations

import posixpath
import threading
from collections import OrderedDict
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from vlpipe.errors import VlpipeError
from vlpipe.index.adder import id_bytes
from vlpipe.index.store import LOCATION_COLUMNS, IndexDir
from vlpipe.rundir import RunDir
from vlpipe.search.where import Where, parse_where

BATCH_ROWS = 65536
CACHED_FILTERS = 8
_ROW = "__vlpipe_row"  # a batch's own row numbers, to turn a filtered table back into a mask


def run_schema(run: RunDir, parts: list[str]) -> pa.Schema:
    """The columns of `parts` from their footers (unified: a column some parts lack is null in
    those), which a filter is checked against. Only distinct schemas are kept: a 10M-row run
    has thousands of parts, nearly all alike."""
    schemas: list[pa.Schema] = []
    for pf in map(run.open_part, parts):
        schema = pf.schema_arrow if pf is not None else None
        if schema is not None and not any(schema.equals(s) for s in schemas):
            schemas.append(schema)
    if not schemas:
        raise VlpipeError(f"no readable parts in {run.path}: nothing to filter")
    try:
        return pa.unify_schemas(schemas)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise VlpipeError(f"the parts of {run.path} disagree on column types: {reason}") from None


def matching_rows(
    run: RunDir, idmap: pa.Table, where: Where, parts: list[str], schema: pa.Schema
) -> np.ndarray:
    """Sorted int64 index rows whose run row satisfies `where`. `idmap` has image_id, or part and
    row (then rows are matched by location); `parts` are the indexed parts' paths."""
    if all(name in idmap.column_names for name in LOCATION_COLUMNS):
        return _by_location(run, _location_groups(idmap), where, parts, schema)
    return _by_image_id(run, _IdLookup(idmap.column("image_id")), where, parts, schema)


def _by_location(
    run: RunDir, groups: dict, where: Where, parts: list[str], schema: pa.Schema
) -> np.ndarray:
    kept = [np.empty(0, np.int64)]
    for path in parts:
        located = groups.get(posixpath.basename(path))
        pf = run.open_part(path) if located is not None else None
        if pf is None:
            continue
        index_rows, part_rows = located
        mask = np.concatenate([m for _, m in _masks(pf, where, schema, ())] or [np.empty(0, bool)])
        inside = part_rows < len(mask)  # a part rewritten shorter since the build: not kept
        kept.append(index_rows[inside][mask[part_rows[inside]]])
    return np.sort(np.concatenate(kept))


def _by_image_id(
    run: RunDir, lookup: _IdLookup, where: Where, parts: list[str], schema: pa.Schema
) -> np.ndarray:
    decided = np.zeros(lookup.size, bool)  # index rows whose first run row has been seen
    allowed = np.zeros(lookup.size, bool)
    for pf in filter(None, map(run.open_part, parts)):
        for table, mask in _masks(pf, where, schema, ("image_id",)):
            rows = lookup.rows(table.column("image_id"))
            found = rows >= 0
            unique, first = np.unique(rows[found], return_index=True)
            new = ~decided[unique]
            decided[unique[new]] = True
            allowed[unique[new]] = mask[found][first[new]]
    return np.flatnonzero(allowed).astype(np.int64)


def _masks(
    pf: pq.ParquetFile, where: Where, schema: pa.Schema, extra: tuple[str, ...]
) -> Iterator[tuple[pa.Table, np.ndarray]]:
    """(batch, which of its rows satisfy `where`) over one part, reading only the filter's
    columns and `extra`; a column the part lacks is null there."""
    names = set(pf.schema_arrow.names)
    wanted = list(dict.fromkeys((*where.columns, *extra)))
    present = [c for c in wanted if c in names]
    if present:
        batches = (
            pa.Table.from_batches([b])
            for b in pf.iter_batches(batch_size=BATCH_ROWS, columns=present)
        )
    else:  # none of them in this part: every value is null
        n = pf.metadata.num_rows
        batches = iter([pa.table({c: pa.nulls(n, schema.field(c).type) for c in wanted})])
    for table in batches:
        for name in wanted:
            if name not in table.column_names:
                field = schema.field(name)
                table = table.append_column(field, pa.nulls(table.num_rows, field.type))
        yield table, _evaluate(table, where)


def _evaluate(table: pa.Table, where: Where) -> np.ndarray:
    numbered = table.append_column(_ROW, pa.array(np.arange(table.num_rows, dtype=np.int64)))
    try:
        kept = numbered.filter(where.expression).column(_ROW)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
        reason = " ".join(str(exc).split())[:200]
        raise VlpipeError(f"bad filter: it cannot be evaluated: {reason}") from None
    mask = np.zeros(table.num_rows, bool)
    mask[kept.to_numpy()] = True
    return mask


def _location_groups(idmap: pa.Table) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per part file name: its index rows and their row numbers in the part."""
    part = idmap.column("part").combine_chunks()
    if not pa.types.is_dictionary(part.type):
        part = pc.dictionary_encode(part)
    codes = part.indices.to_numpy(zero_copy_only=False)
    rows = idmap.column("row").to_numpy()
    order = np.argsort(codes, kind="stable")
    bounds = np.searchsorted(codes[order], np.arange(len(part.dictionary) + 1))
    return {
        name: (order[a:b].astype(np.int64), rows[order[a:b]])
        for name, a, b in zip(part.dictionary.to_pylist(), bounds[:-1], bounds[1:], strict=True)
    }


class _IdLookup:
    """image_id -> index row, over the id map's ids sorted as fixed-width bytes."""

    def __init__(self, ids: pa.ChunkedArray | pa.Array):
        raw = id_bytes(ids)
        self.size = len(raw)
        self.order = np.argsort(raw, kind="stable")  # equal ids: the first index row
        self.sorted = raw[self.order]

    def rows(self, ids: pa.ChunkedArray | pa.Array) -> np.ndarray:
        """The index row of each id, -1 where the index does not hold it."""
        if self.size == 0:
            return np.full(len(ids), -1, np.int64)
        wanted = id_bytes(ids)
        pos = np.minimum(np.searchsorted(self.sorted, wanted), self.size - 1)
        hit = self.sorted[pos] == wanted
        return np.where(hit, self.order[pos], -1).astype(np.int64)


class RowFilter:
    """Filters of one open index: the run's schema read once, recent filters' rows kept."""

    def __init__(self, store: IndexDir, meta: dict, idmap: pa.Table):
        root = store.run_root
        self.run = RunDir(store.fs.unstrip_protocol(root))
        self.run.fs, self.run.root = store.fs, root  # the index's filesystem, options and all
        self.store, self.meta, self._idmap = store, meta, idmap
        self.generation = meta["files"]["idmap"]
        self._schema: pa.Schema | None = None
        self._mapping: pa.Table | None = None
        self._cache: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def parts(self) -> list[str]:
        indexed = set(self.meta.get("parts", []))
        return [p for p in self.run.parts() if posixpath.basename(p) in indexed]

    def schema(self) -> pa.Schema:
        if self._schema is None:
            self._schema = run_schema(self.run, self.parts())
        return self._schema

    def parse(self, text: str) -> Where:
        """The parsed filter; one-line VlpipeError when it is malformed or names bad columns."""
        return parse_where(text, self.schema())

    def rows(self, text: str) -> np.ndarray:
        """Sorted index rows that satisfy the filter `text` (cached per text and generation)."""
        key = (text, self.generation)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        where = self.parse(text)
        rows = matching_rows(self.run, self.mapping(), where, self.parts(), self.schema())
        with self._lock:
            self._cache[key] = rows
            while len(self._cache) > CACHED_FILTERS:
                self._cache.popitem(last=False)
        return rows

    def mapping(self) -> pa.Table:
        """The id map's locations when it records them, else its image ids."""
        if self._mapping is None:
            if self.meta.get("locations"):
                self._mapping = self.store.read_idmap(self.meta, LOCATION_COLUMNS)
            else:
                self._mapping = self._idmap.select(["image_id"])
        return self._mapping
