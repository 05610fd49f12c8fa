"""Query a built index: text, images or raw vectors in, ranked hits (score, uri, caption) out.

Opening a Searcher reads meta.json, the FAISS index and the id map; the embedder is loaded on the
first text or image query, and only the tower that query needs. Nothing here imports Beam; torch
only arrives with an image query or a transformers embedder (vlpipe-mini's text queries on CPU run
in NumPy, models/mini/text_query.py), so `vlpipe search` starts fast.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from vlpipe.errors import VlpipeError
from vlpipe.index.store import IndexDir

if TYPE_CHECKING:
    from PIL import Image

    from vlpipe.models.base import Embedder

MAX_K = 1000
TEXT_BATCH = 64
# Fewer queries than this run on one OpenMP thread: a handful of queries gains nothing from more,
# and on a busy machine the threads' barrier spinning costs 5-20x (100k exact index, one query:
# 10.5 ms on one thread, 66 ms on two while other processes held both cores).
ONE_THREAD_BELOW = 16


@dataclass
class Hit:
    rank: int
    score: float
    image_id: str
    uri: str
    caption: str | None

    def to_dict(self) -> dict:
        return {
            "rank": self.rank,
            "score": round(self.score, 6),
            "image_id": self.image_id,
            "uri": self.uri,
            "caption": self.caption,
        }


class Searcher:
    """An open index. `k` is 1..1000; a k above the index's size returns every vector."""

    def __init__(self, store: IndexDir, meta: dict, index, idmap, embedder: str, device: str):
        self.store, self.meta, self._index, self._idmap = store, meta, index, idmap
        self.embedder_name, self.device = embedder, device
        self._embedder: Embedder | None = None
        self._text_queries = None

    @classmethod
    def open(cls, index: str, embedder: str | None = None, device: str = "cpu") -> Searcher:
        """`index` is a run directory or its index directory. `embedder` None means the one the
        index was built with; another one is refused unless it embeds into the same space."""
        import faiss

        store = IndexDir.locate(index)
        meta = store.read_meta()
        if meta is None:  # removed between locate and read
            raise VlpipeError(f"no index at {index}")
        faiss_index = store.read_index(meta)
        params = meta.get("search_params", {}).get("param_string")
        if params:
            faiss.ParameterSpace().set_index_parameters(faiss_index, params)
        idmap = store.read_idmap(meta)
        searcher = cls(
            store, meta, faiss_index, idmap, embedder or meta["embedder"]["name"], device
        )
        if embedder is not None:  # check a named embedder now, before any query
            searcher._load_text_queries()
        return searcher

    @property
    def size(self) -> int:
        return int(self._index.ntotal)

    @property
    def dim(self) -> int:
        return int(self._index.d)

    # ---- queries -------------------------------------------------------------------------------

    def search_text(self, queries: list[str], k: int = 10) -> list[list[Hit]]:
        k = self._check_k(k)
        if not queries or any(not q or not q.strip() for q in queries):
            raise VlpipeError("empty query: give some words to search for")
        embedder = self._load_text_queries()
        vectors = np.concatenate(
            [
                embedder.embed_texts(queries[i : i + TEXT_BATCH])
                for i in range(0, len(queries), TEXT_BATCH)
            ]
        )
        return self.search_vectors(vectors, k)

    def search_image(self, images: list[Image.Image], k: int = 10) -> list[list[Hit]]:
        k = self._check_k(k)
        if not images:
            raise VlpipeError("no query image given")
        import torch

        embedder = self._load_embedder()
        pixels = torch.stack([embedder.preprocess(im.convert("RGB")) for im in images])
        return self.search_vectors(embedder.embed_images(pixels), k)

    def search_vectors(self, vectors: np.ndarray, k: int) -> list[list[Hit]]:
        """Nearest indexed images by cosine similarity to each row of `vectors`."""
        import faiss

        k = min(self._check_k(k), self.size)
        vectors = np.ascontiguousarray(np.atleast_2d(vectors), dtype=np.float32)
        if vectors.shape[1] != self.dim:
            raise VlpipeError(
                f"query vectors have dimension {vectors.shape[1]}, the index {self.dim}"
            )
        faiss.normalize_L2(vectors)
        scores, rows = self._search(vectors, k)
        return [self._hits(s, r) for s, r in zip(scores, rows, strict=True)]

    def uri_of(self, image_id: str) -> str | None:
        """The uri of an indexed image, None when the index does not hold that id."""
        row = self.row_of(image_id)
        return None if row is None else self._idmap.column("uri")[row].as_py()

    def row_of(self, image_id: str) -> int | None:
        """The index row (= id map row) of an indexed image, None when the index lacks it."""
        import pyarrow.compute as pc

        row = pc.index(self._idmap.column("image_id"), image_id).as_py()
        return None if row < 0 else row

    # ---- helpers -------------------------------------------------------------------------------

    def _search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        import faiss

        if len(vectors) >= ONE_THREAD_BELOW:
            return self._index.search(vectors, k)
        threads = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)  # the calling thread's setting only (an OpenMP ICV)
        try:
            return self._index.search(vectors, k)
        finally:
            faiss.omp_set_num_threads(threads)

    def _hits(self, scores: np.ndarray, rows: np.ndarray) -> list[Hit]:
        found = rows >= 0  # approximate indexes may return fewer than k
        rows, scores = rows[found], scores[found]
        picked = self._idmap.take(rows).to_pydict()
        return [
            Hit(rank + 1, float(score), image_id, uri, caption)
            for rank, (score, image_id, uri, caption) in enumerate(
                zip(scores, picked["image_id"], picked["uri"], picked["caption"], strict=True)
            )
        ]

    @staticmethod
    def _check_k(k: int) -> int:
        if not isinstance(k, (int, np.integer)) or not 1 <= k <= MAX_K:
            raise VlpipeError(f"k must be between 1 and {MAX_K}, got {k}")
        return int(k)

    def _load_embedder(self) -> Embedder:
        """The query embedder, refused when it does not embed into the index's space."""
        if self._embedder is None:
            from vlpipe.models.registry import load_embedder

            self._embedder = self._checked(load_embedder(self.embedder_name, device=self.device))
        return self._embedder

    def _load_text_queries(self):
        """Text queries only: vlpipe-mini's NumPy text path where it applies, else the embedder."""
        if self._embedder is not None:
            return self._embedder
        if self._text_queries is None:
            from vlpipe.models.registry import light_text_encoder

            light = light_text_encoder(self.embedder_name, device=self.device)
            if light is None:
                return self._load_embedder()
            self._text_queries = self._checked(light)
        return self._text_queries

    def _checked(self, embedder):
        built = self.meta["embedder"]
        if embedder.fingerprint() != built.get("fingerprint"):
            raise VlpipeError(
                f"the index at {self.store.folder} was built with embedder "
                f"{built.get('name')!r} (fingerprint {built.get('fingerprint')}); "
                f"{self.embedder_name!r} embeds differently (fingerprint "
                f"{embedder.fingerprint()}): search with the index's embedder or rebuild it"
            )
        return embedder
