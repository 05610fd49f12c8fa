"""Thumbnails a `--save-thumbnails` run stored in its parts, served without the source image.

The source may be gone (a bucket cleaned up after the run) or slow (a tar on object storage);
the run's own small JPEG is then the only picture, and the cheapest. The index build records,
per vector, the part file and the row it came from (vlpipe.index.store, "locations" in
meta.json), so one request reads the `thumbnail` column of the one row group holding that row:
no scan of the parts, whatever the run's size.
"""

from __future__ import annotations

import logging
import posixpath
import threading

import pyarrow as pa
import pyarrow.parquet as pq

from vlpipe.errors import VlpipeError
from vlpipe.index.store import LOCATION_COLUMNS, IndexDir
from vlpipe.rundir import PARTS

log = logging.getLogger(__name__)

COLUMN = "thumbnail"
JPEG_MAGIC = b"\xff\xd8"


class StoredThumbnails:
    """Stored thumbnails by index row; None where a row has none (the caller makes one)."""

    def __init__(self, store: IndexDir, meta: dict):
        self.store, self.meta = store, meta
        # an index directory is always the run's `index/` folder (IndexDir.of_run)
        self.parts_dir = posixpath.join(posixpath.dirname(store.folder), PARTS)
        self._locations: pa.Table | None = None
        self._lock = threading.Lock()

    @classmethod
    def of(cls, searcher) -> StoredThumbnails | None:
        """For an open Searcher whose index records locations, else None."""
        meta = getattr(searcher, "meta", None)
        if not isinstance(meta, dict) or not meta.get("locations"):
            return None
        return cls(searcher.store, meta)

    def get(self, row: int) -> bytes | None:
        """The stored JPEG of index row `row`; None when there is none or it cannot be read."""
        try:
            part, part_row = self._location(row)
            if part is None:
                return None
            return read_stored(self.store.fs, posixpath.join(self.parts_dir, part), part_row)
        except (OSError, pa.ArrowException, VlpipeError, IndexError) as exc:
            log.warning("no stored thumbnail for index row %d: %s", row, exc)
            return None

    def _location(self, row: int) -> tuple[str | None, int]:
        locations = self._load()
        part = locations.column("part")[row].as_py()
        part_row = locations.column("row")[row].as_py()
        return (part, part_row) if part_row is not None else (None, 0)

    def _load(self) -> pa.Table:
        """The id map's location columns, read once, on the first thumbnail asked for."""
        with self._lock:
            if self._locations is None:
                table = self.store.read_idmap(self.meta, LOCATION_COLUMNS)
                # a handful of part names repeated over every row: 4 bytes a row, not 30
                part = table.column("part").dictionary_encode()
                where = table.schema.get_field_index("part")
                self._locations = table.set_column(where, "part", part)
            return self._locations


def read_stored(fs, path: str, row: int) -> bytes | None:
    """Row `row`'s thumbnail in one part: only that row group's thumbnail column is read."""
    with fs.open(path, "rb") as f:
        pf = pq.ParquetFile(f)
        if COLUMN not in pf.schema_arrow.names:
            return None
        group, offset = _row_group_of(pf.metadata, row)
        value = pf.read_row_group(group, columns=[COLUMN]).column(0)[offset].as_py()
    # Served as image/jpeg: anything else (a null, other bytes) falls back to the source.
    return value if isinstance(value, bytes) and value.startswith(JPEG_MAGIC) else None


def _row_group_of(metadata: pq.FileMetaData, row: int) -> tuple[int, int]:
    """(row group, row within it) of a file's row `row`, from the footer alone."""
    start = 0
    for group in range(metadata.num_row_groups):
        rows = metadata.row_group(group).num_rows
        if row < start + rows:
            return group, row - start
        start += rows
    raise IndexError(f"row {row} is past the end of the part ({start} rows)")
