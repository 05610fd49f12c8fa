"""Near neighbours of every row above a similarity threshold, with FAISS, in bounded memory.

Two spaces: cosine over the (re-normalised) embeddings, and phash bits, whose similarity is
1 - hamming/64. Both use the same plan: exact search up to EXACT_MAX rows, else IVF lists
(8-bit scalar-quantised vectors, or binary IVF for hashes) trained on a sample; ids are run row
numbers. Every query row asks for its K nearest; a row whose K-th neighbour still passes the
threshold asks again with a range search, so the edges found are every pair above the threshold
that the index reaches, not a top-K cut of them (which is what makes an incremental run, that
queries only new rows, find the same pairs as a full run).

A `Band` adds pairs just below the threshold when a second signal agrees (`Band.verify`): they
are looked for among each query row's K nearest only, never by range, so the band costs no
search of its own (a copy's original is among its nearest; a clump of look-alikes is not asked
for all of its members).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "EXACT_MAX",
    "K",
    "NPROBE",
    "PHASH_BITS",
    "Band",
    "Found",
    "Space",
    "hash_codes",
    "query",
]

K = 16
EXACT_MAX = 100_000  # rows searched exactly (flat); beyond, IVF
NPROBE = 8  # lists probed: planted-pair recall 0.998 at 1M (bench/dedup_scale.py)
PHASH_BITS = 64


@dataclass
class Found:
    """Pairs above the threshold (a < b, deduplicated later) and each query row's nearest."""

    a: list[np.ndarray] = field(default_factory=list)
    b: list[np.ndarray] = field(default_factory=list)
    sim: list[np.ndarray] = field(default_factory=list)
    queried: int = 0  # query rows searched

    def add(self, a: np.ndarray, b: np.ndarray, sim: np.ndarray) -> None:
        if len(a):
            self.a.append(np.minimum(a, b))
            self.b.append(np.maximum(a, b))
            self.sim.append(sim.astype(np.float32))

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if not self.a:
            return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
        return np.concatenate(self.a), np.concatenate(self.b), np.concatenate(self.sim)


@dataclass(frozen=True)
class Band:
    """Pairs with lower <= similarity < the threshold, kept where verify(rows_a, rows_b) holds."""

    lower: float
    verify: Callable[[np.ndarray, np.ndarray], np.ndarray]


class Space:
    """One FAISS index over rows, answering in similarity (higher is closer)."""

    def __init__(self, index, binary: bool):
        self.index, self.binary = index, binary

    @classmethod
    def vectors(cls, dim: int, rows: int, sample: np.ndarray) -> Space:
        import faiss

        if rows <= EXACT_MAX:
            return cls(faiss.IndexIDMap2(faiss.IndexFlatIP(dim)), binary=False)
        nlist = _nlist(rows)
        index = faiss.index_factory(dim, f"IVF{nlist},SQ8", faiss.METRIC_INNER_PRODUCT)
        index.train(_sample(sample, nlist))
        index.nprobe = NPROBE
        return cls(index, binary=False)

    @classmethod
    def hashes(cls, rows: int, sample: np.ndarray) -> Space:
        import faiss

        if rows <= EXACT_MAX:
            return cls(faiss.IndexBinaryIDMap2(faiss.IndexBinaryFlat(PHASH_BITS)), binary=True)
        nlist = _nlist(rows)
        index = faiss.IndexBinaryIVF(faiss.IndexBinaryFlat(PHASH_BITS), PHASH_BITS, nlist)
        index.train(hash_codes(_sample(sample, nlist)))
        index.nprobe = NPROBE
        return cls(index, binary=True)

    def add(self, rows: np.ndarray, x: np.ndarray) -> None:
        self.index.add_with_ids(self._codes(x), rows.astype(np.int64))

    def search(self, x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        scores, ids = self.index.search(self._codes(x), k)
        return self._sim(scores), ids

    def range(self, x: np.ndarray, threshold: float):
        """(lims, sims, ids) of every indexed row with similarity >= threshold."""
        if self.binary:  # faiss's binary radius is strict: distance < radius
            radius = int(np.floor((1 - threshold) * PHASH_BITS + 1e-9)) + 1
            lims, dist, ids = self.index.range_search(self._codes(x), radius)
            return lims, self._sim(dist), ids
        lims, sims, ids = self.index.range_search(self._codes(x), float(threshold) - 1e-6)
        return lims, sims, ids

    def _codes(self, x: np.ndarray) -> np.ndarray:
        return hash_codes(x) if self.binary else np.ascontiguousarray(x, dtype=np.float32)

    def _sim(self, scores: np.ndarray) -> np.ndarray:
        if self.binary:
            return 1.0 - scores.astype(np.float32) / PHASH_BITS
        return scores.astype(np.float32)


def hash_codes(phash: np.ndarray) -> np.ndarray:
    """uint64 hashes as FAISS binary codes: 8 bytes a row, big-endian like imagehash's hex."""
    return np.ascontiguousarray(phash.astype(">u8")).view(np.uint8).reshape(-1, 8)


def query(
    space: Space,
    batches: Iterator[tuple[np.ndarray, np.ndarray]],
    threshold: float,
    nearest: np.ndarray,
    nearest_sim: np.ndarray,
    band: Band | None = None,
) -> Found:
    """Every pair (query row, other row) with similarity >= threshold, and the verified `band`
    pairs among the K nearest; records each query row's nearest other row in
    `nearest`/`nearest_sim`, and raises an other row's nearest when a query row is closer to it
    than what it had (so old rows learn of new neighbours)."""
    found = Found()
    for rows, x in batches:
        found.queried += len(rows)
        sims, ids = space.search(x, K + 1)
        own = ids == rows[:, None]
        sims = np.where(own | (ids < 0), -np.inf, sims)
        _record_nearest(rows, sims, ids, nearest, nearest_sim)
        passing = sims >= threshold
        full = passing.sum(axis=1) >= K  # there may be more beyond K: ask for all of them
        q, j = np.nonzero(passing & ~full[:, None])
        found.add(rows[q], ids[q, j], sims[q, j])
        if full.any():
            _add_range(space, rows[full], x[full], threshold, found)
        if band is not None:
            _add_band(rows, sims, ids, passing, band, found)
    return found


def _add_band(rows, sims, ids, passing, band: Band, found: Found) -> None:
    q, j = np.nonzero((sims >= band.lower) & ~passing)
    if len(q):
        a, b = rows[q], ids[q, j]
        ok = band.verify(a, b)
        found.add(a[ok], b[ok], sims[q, j][ok])


def _record_nearest(rows, sims, ids, nearest, nearest_sim) -> None:
    best = np.argmax(sims, axis=1)
    top = sims[np.arange(len(rows)), best]
    has = np.isfinite(top)
    better = has & (top > nearest_sim[rows])
    nearest[rows[better]] = ids[better, best[better]]
    nearest_sim[rows[better]] = top[better]
    # the other side: a query row closer to an indexed row than that row's nearest so far
    others, q = ids[has, best[has]], rows[has]
    closer = top[has] > nearest_sim[others]
    nearest[others[closer]] = q[closer]
    nearest_sim[others[closer]] = top[has][closer]


def _add_range(space: Space, rows, x, threshold, found: Found) -> None:
    lims, sims, ids = space.range(x, threshold)
    owner = np.repeat(rows, np.diff(lims.astype(np.int64)))
    keep = ids != owner
    found.add(owner[keep], ids[keep], sims[keep])


def _nlist(rows: int) -> int:
    """About 4 sqrt(n) lists, a power of two (4,096 at 1M rows, 16,384 at 10M)."""
    return int(2 ** np.clip(np.round(np.log2(4 * np.sqrt(rows))), 8, 16))


def _sample(sample: np.ndarray, nlist: int) -> np.ndarray:
    return sample[: 40 * nlist]
