"""GET /api/duplicates?offset=0&limit=20: the near-duplicate clusters `vlpipe dedup` found, the
biggest first, for the page's Duplicates view.

Read on the first request that finds them, once: only the clustered rows of
RUN/dedup/clusters.parquet (cluster_size > 1), sorted biggest cluster first, kept as Arrow
columns plus each cluster's first row and each member's id map row (one vectorised lookup), so
a page is a slice and a `take`, whatever the run's size. Rows alone are never held. A run
without dedup output gets a 404 JSON telling how to make it; it is looked for again on the next
request, so `vlpipe dedup` can run while the server does.
"""

from __future__ import annotations

import threading

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from vlpipe.rundir import CLUSTERS

COLUMNS = ["image_id", "cluster_id", "is_representative", "cluster_size", "similarity", "method"]
DEFAULT_LIMIT = 20
MAX_LIMIT = 100
MAX_MEMBERS = 48  # members listed per cluster; `size` says how many it holds


class Duplicates:
    """The clustered rows of an open Searcher's run, sorted by (size desc, cluster_id, the
    representative first, similarity desc)."""

    def __init__(self, searcher, max_members: int = MAX_MEMBERS):
        self.searcher = searcher
        self.max_members = max_members
        self._lock = threading.Lock()
        self._table: pa.Table | None = None
        self._starts = np.zeros(1, np.int64)  # first row of each cluster, then num_rows
        self._rows = np.zeros(0, np.int64)  # id map row of each member, -1 when not indexed

    @property
    def path(self) -> str:
        return self.searcher.store.run_path(CLUSTERS)

    def load(self) -> bool:
        """Reads the clusters once they exist; False while the run has no dedup output."""
        with self._lock:
            if self._table is not None:
                return True
            fs = self.searcher.store.fs
            if not fs.exists(self.path):
                return False
            with fs.open(self.path, "rb") as f:
                table = pq.read_table(f, columns=COLUMNS, filters=[("cluster_size", ">", 1)])
            table = table.sort_by(
                [
                    ("cluster_size", "descending"),
                    ("cluster_id", "ascending"),
                    ("is_representative", "descending"),
                    ("similarity", "descending"),
                    ("image_id", "ascending"),
                ]  # fmt: skip
            ).combine_chunks()
            ids = self.searcher.idmap.column("image_id")
            rows = pc.index_in(table.column("image_id"), value_set=ids)
            self._rows = pc.fill_null(rows, -1).to_numpy(zero_copy_only=False).astype(np.int64)
            self._starts = _group_starts(table.column("cluster_id"))
            self._table = table
            return True

    @property
    def total(self) -> int:
        return len(self._starts) - 1

    def page(self, offset: int, limit: int) -> dict:
        """Clusters offset..offset+limit, each with up to `max_members` members."""
        if not self.load():
            raise HTTPException(
                404, "no duplicates: run vlpipe dedup <run dir> on this index's run first"
            )
        clusters = []
        for i in range(offset, min(offset + limit, self.total)):
            start, end = int(self._starts[i]), int(self._starts[i + 1])
            clusters.append(self._cluster(start, min(end, start + self.max_members)))
        return {"total": self.total, "offset": offset, "limit": limit, "clusters": clusters}

    def _cluster(self, start: int, end: int) -> dict:
        part = self._table.slice(start, end - start).to_pydict()
        rows = self._rows[start:end]
        idmap = self.searcher.idmap
        looked = idmap.select(["uri", "caption"]).take(np.where(rows >= 0, rows, 0)).to_pydict()
        members = []
        for j, image_id in enumerate(part["image_id"]):
            indexed = rows[j] >= 0
            sim = part["similarity"][j]
            members.append(
                {
                    "image_id": image_id,
                    "uri": looked["uri"][j] if indexed else None,
                    "caption": looked["caption"][j] if indexed else None,
                    "similarity": None if sim is None else round(float(sim), 4),
                    "method": part["method"][j],
                    "is_representative": bool(part["is_representative"][j]),
                    "thumb": f"/thumb/{image_id}" if indexed else None,
                }
            )
        return {
            "cluster_id": part["cluster_id"][0],
            "size": int(part["cluster_size"][0]),
            "members": members,
        }


def _group_starts(cluster_id: pa.Array) -> np.ndarray:
    """Row where each run of equal cluster_ids starts, then the row count (vectorised)."""
    n = len(cluster_id)
    change = np.ones(n, bool)
    if n > 1:
        change[1:] = pc.not_equal(cluster_id.slice(1), cluster_id.slice(0, n - 1)).to_numpy(
            zero_copy_only=False
        )
    return np.append(np.flatnonzero(change), n).astype(np.int64)


def _int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name, str(default))
    try:
        value = int(raw)
    except ValueError:
        raise HTTPException(400, f"{name} must be a whole number") from None
    if not low <= value <= high:
        raise HTTPException(400, f"{name} must be between {low} and {high}")
    return value


def duplicates_route(searcher) -> Route:
    """The /api/duplicates route over an open Searcher."""
    duplicates = Duplicates(searcher)

    async def get(request: Request) -> Response:
        offset = _int_param(request, "offset", 0, 0, 2**31)
        limit = _int_param(request, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
        return JSONResponse(await run_in_threadpool(duplicates.page, offset, limit))

    return Route("/api/duplicates", get, methods=["GET"])
