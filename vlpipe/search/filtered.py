"""Vector search restricted to the index rows a filter keeps (vlpipe.search.where_rows).

Two ways, chosen by how many rows survive (`use_exact`):

* few survivors, fewer than 20,000 or than 1% of the index: exact search over them. Their stored
  vectors are reconstructed from the index (Flat and HNSW storage directly; IVF lists through a
  direct map, made once: ntotal x 8 bytes) and scored with NumPy, in chunks of at most 16k rows so
  memory stays bounded. The cost grows with the survivors only, about 1 us a row on the 2-core dev
  machine (reconstruction dominates: ~20 ms a call for 20k SQfp16 rows, 0.4 ms for 1k). A
  selector search would do worse here: it visits the usual number of candidates and finds few
  survivors among them (an IVF probe of 1% of the lists holds ~1% x 1% of the vectors), so it
  returns fewer than k hits or misses better ones (recall@10 0.53 at 1% survivors, below).
  The scores are those the index itself gives (its stored codes; for IVF-PQ the decoded codes),
  so filtered and unfiltered scores compare.
* many survivors: the index's own search with a faiss ID selector (a bitmap of the survivors, one
  bit per row: built in microseconds, unlike a hash set of up to millions of ids). A search that
  drops non-survivors as it goes finds the best survivors only if it looks further than an
  unfiltered one, so nprobe / efSearch start at the tuned value times SELECTIVITY_BOOST divided
  by the fraction that survives (a power of two, at least 1). Measured on 100k clustered 64-d
  vectors (HNSW32 at efSearch 128, IVF1024 at nprobe 12, both tuned to recall@10 0.96), recall@10
  among the survivors at the tuned value and with the boost, 100 queries on one thread: 50% 0.96
  (1x), 20% 0.93 -> 0.97 (2x), 5% 0.85 -> 0.98 (8x), 2% 0.70 -> 0.98 (16x), 1% 0.53 -> 0.99
  (32x), at 0.1-7 ms a query (HNSW at 32x the slowest).
  A query that still comes back with fewer than k valid hits is searched again with the knob
  doubled, up to 64x in all (nprobe at most nlist, where IVF search is exhaustive), and a query
  still short then is searched exactly, so a query gets k hits whenever k rows survive.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import numpy as np

from vlpipe.search.threads import threads_for

EXACT_ROWS = 20_000
EXACT_FRACTION = 0.01
EXACT_CHUNK = 16_384
SCORES_PER_CHUNK = 1 << 22  # 16 MB of float32 scores
MAX_DOUBLINGS = 6  # the selector path's knob goes up to 2**6 = 64x the tuned value
SELECTIVITY_BOOST = 0.25
_DIRECT_MAP_LOCK = threading.Lock()


def use_exact(count: int, size: int) -> bool:
    """Whether `count` survivors of an index of `size` vectors are searched exactly."""
    return count < max(EXACT_ROWS, EXACT_FRACTION * size)


def filtered_search(
    index,
    vectors: np.ndarray,
    k: int,
    allowed_rows: np.ndarray,
    size: int,
    *,
    exact: bool | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The top `k` among `allowed_rows` (index rows) for each row of `vectors` (normalised float32
    queries), as (scores, rows) of shape (queries, k), best first; past the survivors' count rows
    are -1 and scores -inf, as faiss pads. `size` is the index's vector count; `exact` forces a
    path (None: `use_exact`)."""
    allowed = np.unique(np.asarray(allowed_rows, dtype=np.int64))
    allowed = allowed[(allowed >= 0) & (allowed < size)]
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if len(allowed) == 0:
        return _empty(len(vectors), k)
    with threads_for(len(vectors)):
        if exact if exact is not None else use_exact(len(allowed), size):
            return exact_search(index, vectors, k, allowed)
        return selector_search(index, vectors, k, allowed, size)


def exact_search(
    index, vectors: np.ndarray, k: int, allowed: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Inner products with every allowed row's stored vector, kept top-k chunk by chunk (a
    chunk's score matrix holds at most SCORES_PER_CHUNK floats, however many queries)."""
    scores, rows = _empty(len(vectors), 0)
    _ensure_direct_map(index)
    step = int(np.clip(SCORES_PER_CHUNK // max(len(vectors), 1), 256, EXACT_CHUNK))
    for start in range(0, len(allowed), step):
        chunk = allowed[start : start + step]
        top, where = _best(vectors @ index.reconstruct_batch(chunk).T, k)
        scores, pick = _best(np.concatenate([scores, top], axis=1), k)
        rows = np.take_along_axis(np.concatenate([rows, chunk[where]], axis=1), pick, axis=1)
    return _pad(scores, rows, k)


def selector_search(
    index, vectors: np.ndarray, k: int, allowed: np.ndarray, size: int
) -> tuple[np.ndarray, np.ndarray]:
    """The index's search with a bitmap selector; queries short of k hits widen, then go exact."""
    import faiss

    mask = np.zeros(size, dtype=bool)
    mask[allowed] = True
    bits = np.packbits(mask, bitorder="little")  # faiss: bit (i & 7) of byte i >> 3
    selector = faiss.IDSelectorBitmap(size, faiss.swig_ptr(bits))
    knob = Knob.of(index)
    factor = start_factor(len(allowed) / size)
    scores, rows = index.search(vectors, k, params=knob.params(selector, factor))
    want = min(k, len(allowed))
    for _ in range(MAX_DOUBLINGS):
        short = np.flatnonzero((rows >= 0).sum(axis=1) < want)
        if len(short) == 0 or not knob.widens(factor):
            break
        factor *= 2
        scores[short], rows[short] = index.search(
            vectors[short], k, params=knob.params(selector, factor)
        )
    short = np.flatnonzero((rows >= 0).sum(axis=1) < want)
    if len(short):
        scores[short], rows[short] = exact_search(index, vectors[short], k, allowed)
    del bits  # the selector points into it: alive until the last search above
    return scores, rows


def start_factor(fraction: float) -> int:
    """What the selector path multiplies the tuned knob by when `fraction` of the rows survive:
    SELECTIVITY_BOOST / fraction rounded up to a power of two, within 1..2**MAX_DOUBLINGS."""
    want = SELECTIVITY_BOOST / max(fraction, 1e-9)
    return int(2 ** min(MAX_DOUBLINGS, max(0, math.ceil(math.log2(max(want, 1.0))))))


@dataclass(frozen=True)
class Knob:
    """An index's search-time knob: nprobe (IVF), efSearch (HNSW) or none (Flat: exact)."""

    kind: str  # ivf, hnsw or flat
    value: int = 0  # as tuned (meta.json's search_params, set on the index when it was opened)
    limit: int = 0  # nlist for IVF: probing every list is exhaustive
    quantizer_ef: int = 0  # efSearch of an HNSW coarse quantizer, 0 without one

    @classmethod
    def of(cls, index) -> Knob:
        import faiss

        ivf = faiss.try_extract_index_ivf(index)
        if ivf is not None:
            quantizer = faiss.downcast_index(ivf.quantizer)
            ef = quantizer.hnsw.efSearch if isinstance(quantizer, faiss.IndexHNSW) else 0
            return cls("ivf", int(ivf.nprobe), int(ivf.nlist), int(ef))
        graph = faiss.downcast_index(index)
        if isinstance(graph, faiss.IndexHNSW):
            ef = int(graph.hnsw.efSearch)
            return cls("hnsw", ef, ef * 2**MAX_DOUBLINGS)
        return cls("flat")

    def widens(self, factor: int) -> bool:
        """Whether doubling `factor` searches any wider."""
        return (
            self.kind != "flat" and self.value * factor < self.limit and factor < 2**MAX_DOUBLINGS
        )

    def params(self, selector, factor: int):
        """Search parameters carrying `selector` and the knob times `factor` (within limit)."""
        import faiss

        value = min(self.value * factor, self.limit)
        if self.kind == "ivf":
            extra = {}
            if self.quantizer_ef:  # as vlpipe.index.tune: explore the lists as wide as probed
                ef = max(self.quantizer_ef, 2 * value)
                extra["quantizer_params"] = faiss.SearchParametersHNSW(efSearch=ef)
            return faiss.SearchParametersIVF(sel=selector, nprobe=value, **extra)
        if self.kind == "hnsw":
            return faiss.SearchParametersHNSW(sel=selector, efSearch=value)
        return faiss.SearchParameters(sel=selector)


def _ensure_direct_map(index) -> None:
    """IVF indexes reconstruct by row only with a direct map (row -> list and offset)."""
    import faiss

    ivf = faiss.try_extract_index_ivf(index)
    if ivf is None:
        return
    with _DIRECT_MAP_LOCK:  # one make_direct_map even when several server threads filter
        if ivf.direct_map.type == faiss.DirectMap.NoMap:
            ivf.make_direct_map()


def _best(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each query's best `k` (or fewer) scores, best first, and their columns."""
    if scores.shape[1] > k:
        columns = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    else:
        columns = np.broadcast_to(np.arange(scores.shape[1]), scores.shape)
    top = np.take_along_axis(scores, columns, axis=1)
    order = np.argsort(-top, axis=1, kind="stable")
    return np.take_along_axis(top, order, axis=1), np.take_along_axis(columns, order, axis=1)


def _pad(scores: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    missing = k - scores.shape[1]
    if missing <= 0:
        return np.ascontiguousarray(scores, np.float32), np.ascontiguousarray(rows, np.int64)
    empty_scores, empty_rows = _empty(len(scores), missing)
    return (
        np.concatenate([scores, empty_scores], axis=1).astype(np.float32),
        np.concatenate([rows, empty_rows], axis=1).astype(np.int64),
    )


def _empty(queries: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    return np.full((queries, k), -np.inf, np.float32), np.full((queries, k), -1, np.int64)
