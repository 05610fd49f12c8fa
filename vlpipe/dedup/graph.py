"""From pairs to clusters: exact-byte pairs, connected components, one representative each."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

#: how a pair was found, strongest first; a row's `method` is its strongest pair's
METHODS = ("sha256", "phash", "embedding")
SHA, PHASH, EMBEDDING = range(3)
FIELDS = ("a", "b", "sim", "how")


@dataclass
class Edges:
    """Pairs of run rows (a < b), their similarity and how they were found."""

    a: np.ndarray
    b: np.ndarray
    sim: np.ndarray
    how: np.ndarray  # int8 index into METHODS

    @classmethod
    def empty(cls) -> Edges:
        return cls(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32),
                   np.zeros(0, np.int8))  # fmt: skip

    @classmethod
    def of(cls, a, b, sim, how: int) -> Edges:
        return cls(a.astype(np.int64), b.astype(np.int64), sim.astype(np.float32),
                   np.full(len(a), how, np.int8))  # fmt: skip

    def __len__(self) -> int:
        return len(self.a)

    def plus(self, *others: Edges) -> Edges:
        """All pairs, each (a, b, how) once."""
        parts = (self, *others)
        a, b, sim, how = (np.concatenate([getattr(e, f) for e in parts]) for f in FIELDS)
        _, first = np.unique(np.stack([a, b, how.astype(np.int64)]), axis=1, return_index=True)
        return Edges(a[first], b[first], sim[first], how[first])

    def only(self, methods: set[int]) -> Edges:
        keep = np.isin(self.how, list(methods))
        return Edges(self.a[keep], self.b[keep], self.sim[keep], self.how[keep])


def sha_edges(sha: np.ndarray) -> Edges:
    """Rows with the same bytes: each joined to the first row of its group."""
    known = np.nonzero(sha.any(axis=1))[0]
    if len(known) < 2:
        return Edges.empty()
    order = known[np.lexsort((sha[known, 1], sha[known, 0]))]
    keys = sha[order]
    starts = np.ones(len(order), bool)
    starts[1:] = (keys[1:] != keys[:-1]).any(axis=1)
    group_first = order[np.maximum.accumulate(np.where(starts, np.arange(len(order)), 0))]
    dup = ~starts
    a, b = group_first[dup], order[dup]
    return Edges.of(np.minimum(a, b), np.maximum(a, b), np.ones(int(dup.sum())), SHA)


@dataclass
class Clusters:
    """Per row: its component, whether it represents it, the component size, how it joined."""

    component: np.ndarray
    representative: np.ndarray  # per row: the row that represents its component
    size: np.ndarray
    how: np.ndarray  # int8 method index, -1 for a row alone

    @property
    def is_representative(self) -> np.ndarray:
        return self.representative == np.arange(len(self.component))


def cluster(n: int, edges: Edges, area: np.ndarray, nbytes: np.ndarray, ids: pa.ChunkedArray):
    """Connected components; the representative is the member with the most pixels, then the
    most bytes (the least compressed of equal sizes), then the smallest image_id."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    graph = coo_matrix((np.ones(len(edges), np.int8), (edges.a, edges.b)), shape=(n, n))
    _, component = connected_components(graph, directed=False)
    id_rank = np.empty(n, np.int64)
    id_rank[pc.sort_indices(ids).to_numpy()] = np.arange(n)
    order = np.lexsort((id_rank, -nbytes, -area, component))
    first = np.ones(n, bool)
    first[1:] = component[order][1:] != component[order][:-1]
    rep_of_component = np.empty(component.max() + 1 if n else 0, np.int64)
    rep_of_component[component[order][first]] = order[first]
    size = np.bincount(component, minlength=len(rep_of_component))
    how = np.full(n, -1, np.int8)
    for method in reversed(range(len(METHODS))):  # strongest last, so it wins
        touched = edges.how == method
        how[edges.a[touched]] = method
        how[edges.b[touched]] = method
    return Clusters(component, rep_of_component[component], size[component].astype(np.int32), how)
