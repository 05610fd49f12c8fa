"""Thumbnails a `--save-thumbnails` run stored in its parts, served without the source image.

The source may be gone (a bucket cleaned up after the run) or slow (a tar on object storage);
the run's own small JPEG is then the only picture, and the cheapest. The index build records,
per vector, the part file and the row it came from (vlpipe.index.store, "locations" in
meta.json), so one request reads the `thumbnail` column of the one row group holding that row:
no scan of the parts, whatever the run's size.
"""

from __future__ import annotations

import logging

import pyarrow as pa

from vlpipe.errors import VlpipeError
from vlpipe.index.store import IndexDir
from vlpipe.search.rows import RowReader

log = logging.getLogger(__name__)

COLUMN = "thumbnail"
JPEG_MAGIC = b"\xff\xd8"


class StoredThumbnails:
    """Stored thumbnails by index row; None where a row has none (the caller makes one)."""

    def __init__(self, store: IndexDir, meta: dict):
        self.rows = RowReader(store, meta)

    @classmethod
    def of(cls, searcher) -> StoredThumbnails | None:
        """For an open Searcher whose index records locations, else None."""
        meta = getattr(searcher, "meta", None)
        if not isinstance(meta, dict) or not meta.get("locations"):
            return None
        return cls(searcher.store, meta)

    def get(self, row: int) -> bytes | None:
        """The stored JPEG of index row `row`; None when there is none or it cannot be read.
        Served as image/jpeg: anything else (a null, other bytes) falls back to the source."""
        try:
            [values] = self.rows.read([row], [COLUMN])
        except (OSError, pa.ArrowException, VlpipeError, IndexError) as exc:
            log.warning("no stored thumbnail for index row %d: %s", row, exc)
            return None
        value = values[COLUMN]
        return value if isinstance(value, bytes) and value.startswith(JPEG_MAGIC) else None
