"""Which FAISS index to build for N vectors of dimension D within a memory budget.

The ladder follows autofaiss's published selection (`get_optimal_index_keys_v2`,
`get_optimal_nb_clusters`, `get_optimal_quantization`) and faiss's index guidelines: exact search
for small corpora, a graph while it is cheap, IVF lists with an HNSW coarse quantizer and
compressed codes for large ones. Changes for vlpipe, each measured on this project's 2-core
machine (BENCHMARKS.md, "Index and search"):

* exact `IndexFlatIP` below 20,000 vectors (autofaiss: 1,000): exact search over 20k vectors costs
  about a millisecond and needs no training or tuning;
* HNSW (autofaiss: whenever its memory fits) only up to 200,000 vectors: at 1M clustered 256-d
  vectors HNSW32 took 641 s to build and stopped at recall@10 0.93 with efSearch 1024, where
  IVF4096_HNSW32 with SQ8 codes took 411 s and passed 0.95 with a fifth of the memory. HNSW
  stores fp16 vectors when the run wrote fp16 embeddings (lossless, half the memory) and its degree
  follows autofaiss's memory rule, M = min(32, (budget / N - bytes per vector) / 8) >= 8;
* IVF lists of fp16 vectors (lossless for fp16 embeddings) instead of autofaiss's IVF-Flat, and
  of SQ8 codes (one byte per dimension) when fp16 does not fit, before PQ: on 100k clustered 256-d
  vectors SQ8 reaches recall@10 0.98 where IVF-PQ64 stops at 0.66, and at 1M SQ8's rounding
  caps recall@10 near 0.96 (nprobe 512), which fp16 codes do not;
* IVF lists: nlist = 4*sqrt(N) rounded to a power of two at every size (autofaiss jumps to 16k-65k
  lists above 1M vectors: hours of k-means on 2 cores), trained on 40 vectors per list (faiss asks
  for at least 39), with an HNSW coarse quantizer from 1,000 lists up, as autofaiss does;
* IVF-PQ, when nothing else fits the budget, takes the largest PQ code of autofaiss's list that
  does. Its recall is what the code allows (the tuner records it and warns below 0.95); OPQ is left
  out, its training took minutes per 100k vectors here.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field

from vlpipe.errors import VlpipeError

KINDS = ("auto", "flat", "hnsw", "ivfsq", "ivfpq")
FLAT_THRESHOLD = 20_000
# autofaiss's PQ code sizes, best first
PQ_VALUES = (256, 128, 64, 48, 32, 24, 16, 8, 4)
HNSW_MAX_AUTO = 200_000
TRAIN_PER_LIST = 40
MIN_TRAIN_PER_LIST = 39  # below this k-means warns that it has too few points
MIN_IVF = 1000  # k-means lists and PQ codebooks need a few thousand training vectors
HNSW_UPPER = 1.05
ID_BYTES = 8  # an IVF list stores one int64 id per vector


@dataclass
class IndexPlan:
    """A chosen index: faiss factory string, its knobs, and the memory it should take."""

    kind: str
    factory: str
    params: dict = field(default_factory=dict)
    estimated_bytes: int = 0
    train_size: int = 0

    @property
    def needs_training(self) -> bool:
        return self.train_size > 0

    @property
    def is_ivf(self) -> bool:
        return self.kind in ("ivfsq", "ivfpq")

    @property
    def needs_tuning(self) -> bool:
        return self.kind != "flat"


def parse_memory(value: str | int | None) -> int:
    """'4GB', '512M', '1.5GiB' or a byte count; binary units (1 GB = 1024**3 bytes).

    None means half of this machine's physical memory.
    """
    if value is None:
        return _physical_memory() // 2
    if isinstance(value, int):
        if value <= 0:
            raise VlpipeError(f"memory budget must be positive, got {value}")
        return value
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)(i?b?)\s*", str(value), re.IGNORECASE)
    if not match or float(match.group(1)) <= 0:
        raise VlpipeError(f"bad memory budget {value!r}: use a size such as 4GB, 512MB or 2G")
    power = " kmgt".index(match.group(2).lower() or " ")
    return int(float(match.group(1)) * 1024**power)


def _physical_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 8 * 1024**3


def nlist_for(n: int) -> int:
    """IVF lists: 4*sqrt(n) rounded to a power of two, with enough vectors to train each."""
    nlist = 2 ** round(math.log2(max(1.0, 4 * math.sqrt(n))))
    return max(1, min(nlist, n // MIN_TRAIN_PER_LIST))


def hnsw_bytes_per_vector(dim: int, m: int, bytes_per_dim: int) -> float:
    """The vector, 2M level-0 links of 4 bytes (+5% for upper levels), offsets and levels."""
    return bytes_per_dim * dim + 8 * m * HNSW_UPPER + 12


def hnsw_m_for(n: int, dim: int, budget: int, bytes_per_dim: int) -> int:
    """autofaiss's rule: the graph degree M that the budget leaves room for."""
    return int(math.floor((budget / max(n, 1) - bytes_per_dim * dim - 12) / (8 * HNSW_UPPER)))


def plan_flat(n: int, dim: int) -> IndexPlan:
    return IndexPlan("flat", "Flat", {}, estimated_bytes=4 * n * dim)


def plan_hnsw(n: int, dim: int, m: int, fp16: bool) -> IndexPlan:
    storage = "SQfp16" if fp16 else "Flat"
    per_vector = hnsw_bytes_per_vector(dim, m, 2 if fp16 else 4)
    return IndexPlan(
        "hnsw",
        f"HNSW{m},{storage}",
        {"M": m, "efConstruction": 40, "storage": storage},
        estimated_bytes=int(n * per_vector),
    )


def _quantizer(nlist: int) -> str:
    return f"IVF{nlist}_HNSW32" if nlist >= 1000 else f"IVF{nlist}"


def ivfsq_bytes(n: int, dim: int, bytes_per_dim: int = 1) -> int:
    return n * (bytes_per_dim * dim + ID_BYTES) + 4 * nlist_for(n) * dim


def plan_ivfsq(n: int, dim: int, budget: int) -> IndexPlan:
    """IVF lists of scalar-quantized vectors: fp16 (exact for fp16 embeddings) when they fit the
    budget, else one byte per dimension (SQ8)."""
    nlist = nlist_for(n)
    codes, width = ("SQfp16", 2) if ivfsq_bytes(n, dim, 2) <= budget else ("SQ8", 1)
    return IndexPlan(
        "ivfsq",
        f"{_quantizer(nlist)},{codes}",
        {"nlist": nlist, "codes": codes},
        estimated_bytes=ivfsq_bytes(n, dim, width),
        train_size=min(n, TRAIN_PER_LIST * nlist),
    )


def plan_ivfpq(n: int, dim: int, budget: int) -> IndexPlan:
    """The largest PQ code from autofaiss's list that fits the budget (ids included)."""
    nlist = nlist_for(n)
    centroid_bytes = 4 * nlist * dim
    for m in PQ_VALUES:
        if m >= dim or dim % m:
            continue
        need = n * (m + ID_BYTES) + centroid_bytes
        if need <= budget:
            break
    else:
        smallest = n * (4 + ID_BYTES) + centroid_bytes
        raise VlpipeError(
            f"memory budget {_fmt(budget)} is too small for {n} vectors: "
            f"the smallest IVF-PQ index needs {_fmt(smallest)}"
        )
    return IndexPlan(
        "ivfpq",
        f"{_quantizer(nlist)},PQ{m}x8np",  # np: no polysemous training (minutes, unused here)
        {"nlist": nlist, "pq_m": m},
        estimated_bytes=int(need),
        # k-means wants >= 39 vectors per list; each PQ codebook (256 codes) wants ~40 per code
        train_size=min(n, max(TRAIN_PER_LIST * nlist, 40 * 256)),
    )


def plan_index(
    n: int, dim: int, kind: str = "auto", budget: int | None = None, fp16: bool = True
) -> IndexPlan:
    """The index for n vectors: `kind` forces one; `auto` takes flat below 20k vectors, else the
    first that fits the budget of HNSW (up to 200k vectors), IVF-SQ8 and IVF-PQ."""
    if kind not in KINDS:
        raise VlpipeError(f"unknown index kind {kind!r}: use one of {', '.join(KINDS)}")
    budget = budget or parse_memory(None)
    bytes_per_dim = 2 if fp16 else 4
    if kind == "flat" or (kind == "auto" and n < FLAT_THRESHOLD):
        return plan_flat(n, dim)
    m = hnsw_m_for(n, dim, budget, bytes_per_dim)
    if kind == "hnsw":
        return plan_hnsw(n, dim, max(8, min(m, 32)), fp16)
    if kind == "auto" and m >= 8 and n <= HNSW_MAX_AUTO:
        return plan_hnsw(n, dim, min(m, 32), fp16)
    if n < MIN_IVF:
        raise VlpipeError(f"an IVF index needs at least {MIN_IVF} vectors, this run has {n}")
    if kind == "ivfsq" or (kind == "auto" and ivfsq_bytes(n, dim) <= budget):
        return plan_ivfsq(n, dim, budget)
    return plan_ivfpq(n, dim, budget)


def _fmt(nbytes: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if nbytes < 1024:
            return f"{nbytes:.0f}{unit}"
        nbytes /= 1024
    return f"{nbytes:.1f}TB"
