"""`vlpipe dedup OUT`: near-duplicate clusters of a run's rows.

Signals: exact bytes (sha256, always), the perceptual hash (phash bits) and the embedding
(cosine). With `both`, also a verified band: a pair among a row's nearest whose cosine is a
little below the threshold (down to `near_threshold`) and whose phash bits agree more than
chance (`near_phash_distance`) - the crops that move the hash past the phash rule and the
embedding a little below its threshold. Pairs are found with FAISS (vlpipe.dedup.neighbours),
joined into connected components (vlpipe.dedup.graph) and written to OUT/dedup/
(vlpipe.dedup.output, vlpipe.dedup.report). Memory: the index (exact, or 8-bit IVF codes: dim
bytes a row) plus a few numbers and the image_id per row; vectors stream from the parts, and no
other column is read. Incremental: a rerun after new parts landed queries only their rows
(vlpipe.dedup.state).
"""

from __future__ import annotations

import posixpath
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from vlpipe.dedup import neighbours, output, state
from vlpipe.dedup.graph import EMBEDDING, METHODS, PHASH, Edges, cluster, sha_edges
from vlpipe.dedup.neighbours import Band, Space
from vlpipe.dedup.signals import Signals, iter_part, part_rows, read_signals
from vlpipe.errors import VlpipeError
from vlpipe.index.adder import valid_vectors
from vlpipe.index.store import captions_only
from vlpipe.rundir import RunDir

__all__ = [
    "DEFAULT_METHOD",
    "DEFAULT_PHASH_DISTANCE",
    "DEFAULT_THRESHOLD",
    "MAX_PHASH_DISTANCE",
    "DedupOptions",
    "dedup",
    "informative",
]

DEFAULT_METHOD = "both"
DEFAULT_THRESHOLD = 0.88  # embedding cosine (chosen by bench/dedup_quality.py on train photos)
DEFAULT_PHASH_DISTANCE = 10  # bits of 64 (likewise)
DEFAULT_NEAR_THRESHOLD = 0.78  # the verified band's lowest cosine (likewise)
#: ... and the most phash bits its pairs differ in: two unrelated hashes agree this well with
#: probability 0.0018, so a row's 16 neighbours (and the rows it is a neighbour of) add about
#: 0.06 chance pairs - too few to chain into clusters (at 26 bits: 2.7, and they do)
DEFAULT_NEAR_PHASH_DISTANCE = 20
MAX_PHASH_DISTANCE = 24  # beyond, unrelated photos share hashes
MAX_NEAR_PHASH_DISTANCE = 31  # unrelated photos differ in 32 bits on average
RETRAIN_GROWTH = 4
QUERY_ROWS = 16384


@dataclass(frozen=True)
class DedupOptions:
    method: str = DEFAULT_METHOD  # embedding | phash | both
    threshold: float = DEFAULT_THRESHOLD
    phash_distance: int = DEFAULT_PHASH_DISTANCE
    full: bool = False  # ignore the saved state
    near_threshold: float = DEFAULT_NEAR_THRESHOLD  # at or above threshold: no band
    near_phash_distance: int = DEFAULT_NEAR_PHASH_DISTANCE

    @property
    def band(self) -> bool:
        """Whether the verified band applies (it needs both signals)."""
        return self.method == "both" and self.near_threshold < self.threshold

    @property
    def spaces(self) -> list[str]:
        return {"embedding": ["vectors"], "phash": ["hashes"], "both": ["vectors", "hashes"]}[
            self.method
        ]

    def check(self) -> None:
        if self.method not in ("embedding", "phash", "both"):
            raise VlpipeError(f"unknown dedup method {self.method!r}: embedding, phash or both")
        if not 0.0 < self.threshold <= 1.0:
            raise VlpipeError(f"--threshold {self.threshold} is outside (0, 1]: it is a cosine")
        if not 0 <= self.phash_distance <= MAX_PHASH_DISTANCE:
            raise VlpipeError(
                f"--phash-distance {self.phash_distance} is outside 0..{MAX_PHASH_DISTANCE} bits"
            )
        if not 0.0 < self.near_threshold <= 1.0:
            raise VlpipeError(f"--near-threshold {self.near_threshold} is outside (0, 1]: a cosine")
        if not 0 <= self.near_phash_distance <= MAX_NEAR_PHASH_DISTANCE:
            raise VlpipeError(
                f"--near-phash-distance {self.near_phash_distance} is outside"
                f" 0..{MAX_NEAR_PHASH_DISTANCE} bits"
            )


def dedup(run_dir: str, options: DedupOptions = DedupOptions()) -> dict:
    """Cluster the run's rows; writes OUT/dedup/ and returns its summary.json content."""
    options.check()
    start = time.perf_counter()
    run = RunDir(run_dir)
    manifest = run.require_manifest()
    if "vectors" in options.spaces and captions_only(manifest):
        raise VlpipeError(f"{run_dir} has no embeddings (a captions-only run): use --method phash")
    names = [posixpath.basename(p) for p in run.parts()]
    if not names:
        raise VlpipeError(f"{run_dir} has no result parts to deduplicate")
    settings = _settings(options, manifest)
    old, reason = _usable_state(run, settings, names, options.full)
    order = [p for p, _ in old.parts] if old else []
    order += sorted(set(names) - set(order))
    signals = read_signals(run, order)
    n_old = sum(r for _, r in old.parts) if old else 0
    job = _Job(run, signals, n_old, old)
    for space in options.spaces:
        job.search(space, options)
    if job.retrain:  # an index outgrew its plan: start over, once
        return dedup(run_dir, DedupOptions(**{**options.__dict__, "full": True}))
    found = job.edges.plus(sha_edges(signals.sha))
    clusters = cluster(signals.n, found, signals.area, signals.size, signals.image_id)
    output.write_clusters(run, signals.image_id, clusters, job.nearest, job.nearest_sim)
    state.save(run, job.state(settings), job.spaces)
    summary = _summary(signals, clusters, job, options, reason, time.perf_counter() - start)
    output.write_summary(run, summary)
    return summary


def _settings(options: DedupOptions, manifest: dict) -> dict:
    embedder = (manifest.get("models") or {}).get("embedder") or {}
    fingerprint = embedder.get("fingerprint") if isinstance(embedder, dict) else None
    return {
        "method": options.method,
        "threshold": options.threshold,
        "phash_distance": options.phash_distance,
        "near": [options.near_threshold, options.near_phash_distance] if options.band else None,
        "embedder": fingerprint if "vectors" in options.spaces else None,
    }


def _usable_state(run: RunDir, settings: dict, names: list[str], full: bool):
    """(state, why a full run) - the saved state when this run can extend it."""
    if full:
        return None, "asked for a full run"
    old = state.load(run)
    if old is None:
        return None, "first run"
    if old.settings != settings:
        return None, "settings or model changed"
    rows = part_rows(run, [p for p, _ in old.parts if p in set(names)])
    if any(rows.get(p) != r for p, r in old.parts):
        return None, "parts changed since the last dedup"
    return old, "incremental"


class _Job:
    """The searches of one dedup: per space, build (or extend) the index and query new rows."""

    def __init__(self, run: RunDir, signals: Signals, n_old: int, old: state.State | None):
        self.run, self.signals, self.n_old, self.old = run, signals, n_old, old
        n = signals.n
        self.nearest = np.full(n, -1, np.int64)
        self.nearest_sim = np.full(n, -np.inf, np.float32)
        if old is not None:
            self.nearest[:n_old] = old.nearest
            self.nearest_sim[:n_old] = old.nearest_sim
        self.edges = old.edges if old is not None else Edges.empty()
        self.spaces: dict[str, Space] = {}
        self.trained = dict(old.trained_rows) if old is not None else {}
        self.retrain = False
        self.queried: dict[
            str, int
        ] = {}  # rows searched per space: new rows only, when incremental

    def search(self, name: str, options: DedupOptions) -> None:
        primary = name == "vectors" or options.method == "phash"
        if name == "vectors":
            threshold, how, batches = options.threshold, EMBEDDING, self._vectors
        else:
            threshold, how, batches = 1 - options.phash_distance / 64, PHASH, self._hashes
        space = self._space(name, batches)
        if space is None:
            self.retrain = True
            return
        for rows, x in batches(self.n_old):
            space.add(rows, x)
        near, near_sim = (self.nearest, self.nearest_sim) if primary else _scratch(self.signals.n)
        band = None
        if name == "vectors" and options.band:
            band = Band(
                options.near_threshold, phash_agrees(self.signals, options.near_phash_distance)
            )
        found = neighbours.query(space, batches(self.n_old), threshold, near, near_sim, band)
        self.edges = self.edges.plus(Edges.of(*found.arrays(), how))
        self.queried[name] = found.queried
        self.spaces[name] = space

    def _space(self, name: str, batches) -> Space | None:
        n = self.signals.n
        if self.old is not None:
            index = state.load_index(self.run, name)
            trained = self.trained.get(name)
            outgrown = (trained and n > RETRAIN_GROWTH * trained) or (
                not trained and n > neighbours.EXACT_MAX
            )
            if index is None or outgrown:
                return None
            return Space(index, binary=name == "hashes")
        sample = _sample(batches(0), n)
        if name == "vectors":
            dim = sample.shape[1] if len(sample) else self._dim()
            space = Space.vectors(dim, n, sample)
        else:
            space = Space.hashes(n, sample)
        self.trained[name] = n if n > neighbours.EXACT_MAX else None
        return space

    def _vectors(self, start: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(rows, unit vectors) of valid embeddings from row `start` on, streamed from parts."""
        import faiss

        dim, row = self._dim(), 0
        for name, count in zip(self.signals.parts, self.signals.counts, strict=True):
            if row + count <= start:
                row += count
                continue
            for batch in iter_part(self.run, name, ["embedding"]):
                x, valid = valid_vectors(batch.column("embedding"), dim)
                rows = row + np.arange(len(batch))
                row += len(batch)
                keep = valid & (rows >= start)
                if keep.any():
                    x = np.ascontiguousarray(x[keep])
                    faiss.normalize_L2(x)
                    yield rows[keep], x

    def _hashes(self, start: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        s = self.signals
        rows = np.nonzero(s.has_phash & informative(s.phash))[0]
        rows = rows[rows >= start]
        for i in range(0, len(rows), QUERY_ROWS):
            chunk = rows[i : i + QUERY_ROWS]
            yield chunk, s.phash[chunk]

    def _dim(self) -> int:
        for name in self.signals.parts:
            pf = self.run.open_part(self.run.join("parts", name))
            if pf is not None:
                return pf.schema_arrow.field("embedding").type.list_size
        raise VlpipeError("no readable part has embeddings")

    def state(self, settings: dict) -> state.State:
        s = self.signals
        return state.State(
            settings=settings,
            parts=[[p, c] for p, c in zip(s.parts, s.counts, strict=True)],
            trained_rows=self.trained,
            edges=self.edges,
            nearest=self.nearest,
            nearest_sim=self.nearest_sim,
        )


def informative(phash: np.ndarray) -> np.ndarray:
    """Hashes of flat images (almost all bits equal) say nothing: a white and a black page share
    them. Such rows never link by phash."""
    bits = np.unpackbits(phash.astype(">u8").view(np.uint8).reshape(-1, 8), axis=1).sum(axis=1)
    return (bits > 2) & (bits < 62)


def phash_agrees(signals: Signals, distance: int):
    """The band's check: both rows have an informative phash, at most `distance` bits apart."""
    usable = signals.has_phash & informative(signals.phash)

    def verify(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        bits = np.bitwise_count(signals.phash[a] ^ signals.phash[b])
        return usable[a] & usable[b] & (bits <= distance)

    return verify


def _sample(batches: Iterator[tuple[np.ndarray, np.ndarray]], n: int, size: int = 262_144):
    """Every k-th item so the sample spreads over all parts (only IVF training needs it)."""
    if n <= neighbours.EXACT_MAX:
        return np.zeros((0, 0), np.float32)
    step = max(1, n // size)
    picked = [x[rows % step == 0] for rows, x in batches]
    return np.concatenate(picked) if picked else np.zeros((0, 0), np.float32)


def _scratch(n: int) -> tuple[np.ndarray, np.ndarray]:
    return np.full(n, -1, np.int64), np.full(n, -np.inf, np.float32)


def _summary(signals, clusters, job, options, reason, seconds) -> dict:
    dup = ~clusters.is_representative
    by_method = {m: int((dup & (clusters.how == i)).sum()) for i, m in enumerate(METHODS)}
    return {
        "images": signals.n,
        "duplicates": int(dup.sum()),
        "kept": int((~dup).sum()),
        "clusters": int((clusters.is_representative & (clusters.size > 1)).sum()),
        "largest_cluster": int(clusters.size.max()) if signals.n else 0,
        "by_method": by_method,
        "method": options.method,
        "threshold": options.threshold,
        "phash_distance": options.phash_distance,
        "near_threshold": options.near_threshold if options.band else None,
        "near_phash_distance": options.near_phash_distance if options.band else None,
        "run": reason,
        "new_rows": signals.n - job.n_old,
        "queried": job.queried,
        "parts": len(signals.parts),
        "histogram": output.histogram(job.nearest_sim),
        "histogram_of": "embedding cosine" if "vectors" in options.spaces else "1 - phash bits/64",
        "seconds": round(seconds, 2),
    }
