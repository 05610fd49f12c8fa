"""`search --dedup`: hits of one near-duplicate cluster (made by `vlpipe dedup`) come back once,
as the cluster's representative, with the number of other copies the cluster holds.

Reads only the clustered rows of RUN/dedup/clusters.parquet (cluster_size > 1) and maps them
onto id map rows with one vectorised lookup, so a collapse is an array index per hit. Rows the
clusters do not name (added since the last dedup) stand for themselves.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from vlpipe.errors import VlpipeError
from vlpipe.index.store import IndexDir
from vlpipe.rundir import CLUSTERS


class Collapser:
    """Per id map row: the row of its cluster's representative, and the cluster's size."""

    def __init__(self, rep_row: np.ndarray, size: np.ndarray, idmap):
        self.rep_row, self.size, self.idmap = rep_row, size, idmap

    @classmethod
    def load(cls, store: IndexDir, idmap) -> Collapser:
        path = store.run_path(CLUSTERS)
        if not store.fs.exists(path):
            raise VlpipeError(
                "no duplicate clusters to collapse: run `vlpipe dedup <run dir>` first"
            )
        table = pq.read_table(
            store.fs.open(path, "rb"),
            columns=["image_id", "cluster_id", "cluster_size"],
            filters=[("cluster_size", ">", 1)],
        )
        ids = idmap.column("image_id")
        member = _rows_of(table.column("image_id"), ids)
        rep = _rows_of(table.column("cluster_id"), ids)
        n = idmap.num_rows
        rep_row, size = np.arange(n, dtype=np.int64), np.ones(n, np.int64)
        known = member >= 0
        # a representative that is not indexed (no valid vector): the member stands for itself
        rep_row[member[known]] = np.where(rep[known] >= 0, rep[known], member[known])
        size[member[known]] = table.column("cluster_size").to_numpy()[known]
        return cls(rep_row, size, idmap)

    def collapse(self, hits: list, k: int) -> list:
        """The first k clusters in hit order, each as its representative with the best score."""
        out, seen = [], set()
        for hit in hits:
            rep = int(self.rep_row[hit.row]) if hit.row >= 0 else -1
            key = rep if rep >= 0 else ("id", hit.image_id)
            if key in seen:
                continue
            seen.add(key)
            if rep >= 0 and rep != hit.row:
                hit = replace(
                    hit,
                    image_id=self.idmap.column("image_id")[rep].as_py(),
                    uri=self.idmap.column("uri")[rep].as_py(),
                    caption=self.idmap.column("caption")[rep].as_py(),
                    row=rep,
                )
            hit.duplicates = int(self.size[hit.row]) - 1 if hit.row >= 0 else 0
            hit.rank = len(out) + 1
            out.append(hit)
            if len(out) == k:
                break
        return out


def _rows_of(values, ids) -> np.ndarray:
    """Id map row of each value, -1 where the id map lacks it."""
    rows = pc.fill_null(pc.index_in(values, value_set=ids), -1)
    return rows.to_numpy(zero_copy_only=False).astype(np.int64)
