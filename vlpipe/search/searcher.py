"""Query a built index: text, images or raw vectors in, ranked hits (score, uri, caption) out.

Opening a Searcher reads meta.json, the FAISS index and the id map; the embedder is loaded on the
first text or image query, and only the tower that query needs. Nothing here imports Beam; torch
only arrives with an image query or a transformers embedder (vlpipe-mini's text queries on CPU run
in NumPy, models/mini/text_query.py), so `vlpipe search` starts fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from vlpipe.errors import VlpipeError
from vlpipe.index.store import IndexDir
from vlpipe.search.hits import COMMON_WEIGHT, RARE_SHARE, RARE_WEIGHT, RRF_DEPTH, Hit, fuse
from vlpipe.search.threads import threads_for

if TYPE_CHECKING:
    from PIL import Image

    from vlpipe.models.base import Embedder

__all__ = ["KEYWORD_DEFAULT", "MAX_K", "MODES", "Searcher"]

MAX_K = 10_000  # the CLI allows 1,000 on screen, 10,000 into a file; the API pages to 10,000
TEXT_BATCH = 64
#: search_text's modes: vector (embedding similarity), keyword (BM25 over caption + alt text,
#: vlpipe.index.keyword) and hybrid (reciprocal rank fusion of the two, `fuse`)
MODES = ("vector", "keyword", "hybrid")
#: the mode when none is given and the index has a keyword index (else it is vector). Hybrid
#: only while its R@1 and R@10 are not below vector's on Flickr8k dev (bench/hybrid.py): they
#: are (0.101 / 0.412 against 0.233 / 0.666 with vlpipe-mini), so vector; ask for hybrid by name
KEYWORD_DEFAULT = "vector"


class Searcher:
    """An open index. `k` is 1..10,000; a k above the index's size returns every vector."""

    def __init__(self, store: IndexDir, meta: dict, index, idmap, embedder: str, device: str):
        self.store, self.meta, self._index, self._idmap = store, meta, index, idmap
        self.embedder_name, self.device = embedder, device
        self._rows = None
        self._embedder: Embedder | None = None
        self._text_queries = None
        self._keyword = None  # vlpipe.index.keyword.KeywordIndex, read on first use
        self._row_filter = None  # vlpipe.search.where_rows.RowFilter, made by the first filter
        self._collapser = None  # vlpipe.search.collapse.Collapser, read by the first dedup search

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
    def idmap(self):
        """The id map (pyarrow Table): image_id, uri, caption per index row, and more."""
        return self._idmap

    @property
    def dim(self) -> int:
        return int(self._index.d)

    # ---- queries -------------------------------------------------------------------------------

    @property
    def has_keywords(self) -> bool:
        """Whether the index has a keyword index (those built before it have none)."""
        return bool(self.meta["files"].get("keyword"))

    @property
    def default_mode(self) -> str:
        return KEYWORD_DEFAULT if self.has_keywords else "vector"

    def search_text(
        self,
        queries: list[str],
        k: int = 10,
        mode: str | None = None,
        where: str | None = None,
        dedup: bool = False,
    ) -> list[list[Hit]]:
        """Images for each text query. `mode` (see MODES; None: `default_mode`): keyword hits
        are images whose caption or alt text holds a query word, so there may be fewer than k
        (none at all when no image holds one); hybrid fuses both rankings (`fuse`). `where`
        keeps only images whose row satisfies that filter (`search_vectors`). `dedup` returns
        each near-duplicate cluster once, as its representative (`collapsed`)."""
        k = self._check_k(k)
        if dedup:
            return self.collapsed(lambda depth: self.search_text(queries, depth, mode, where), k)
        if not queries or any(not q or not q.strip() for q in queries):
            raise VlpipeError("empty query: give some words to search for")
        mode = self._check_mode(mode)
        self._check_where(where)  # a bad filter is refused before any model loads
        if mode == "keyword":
            return self._search_keywords(queries, k, where)
        embedder = self._load_text_queries()
        vectors = np.concatenate(
            [
                embedder.embed_texts(queries[i : i + TEXT_BATCH])
                for i in range(0, len(queries), TEXT_BATCH)
            ]
        )
        if mode == "vector":
            return self.search_vectors(vectors, k, where)
        depth = max(k, RRF_DEPTH)
        by_vector = self.search_vectors(vectors, depth, where)
        by_keyword = self._search_keywords(queries, depth, where)
        weights = [
            RARE_WEIGHT if share <= RARE_SHARE else COMMON_WEIGHT
            for share in self._keyword.rarest_share(queries)
        ]
        return [
            fuse(v, w, k, weight)
            for v, w, weight in zip(by_vector, by_keyword, weights, strict=True)
        ]

    def search_image(
        self, images: list[Image.Image], k: int = 10, where: str | None = None, dedup: bool = False
    ) -> list[list[Hit]]:
        k = self._check_k(k)
        if not images:
            raise VlpipeError("no query image given")
        if dedup:
            return self.collapsed(lambda depth: self.search_image(images, depth, where), k)
        self._check_where(where)  # a bad filter is refused before any model loads
        import torch

        embedder = self._load_embedder()
        pixels = torch.stack([embedder.preprocess(im.convert("RGB")) for im in images])
        return self.search_vectors(embedder.embed_images(pixels), k, where)

    def search_vectors(
        self, vectors: np.ndarray, k: int, where: str | None = None, dedup: bool = False
    ) -> list[list[Hit]]:
        """Nearest indexed images by cosine similarity to each row of `vectors`. `where` (a
        filter over the run's columns, vlpipe.search.where; None or blank: none) keeps only the
        images whose row satisfies it: k of them whenever k do."""
        import faiss

        if dedup:
            return self.collapsed(lambda depth: self.search_vectors(vectors, depth, where), k)
        k = min(self._check_k(k), self.size)
        vectors = np.ascontiguousarray(np.atleast_2d(vectors), dtype=np.float32)
        if vectors.shape[1] != self.dim:
            raise VlpipeError(
                f"query vectors have dimension {vectors.shape[1]}, the index {self.dim}"
            )
        faiss.normalize_L2(vectors)
        if where is not None and where.strip():
            scores, rows = self._search_where(vectors, k, where)
        else:
            scores, rows = self._search(vectors, k)
            self._fill_short(vectors, k, scores, rows)
        return [self._hits(s, r) for s, r in zip(scores, rows, strict=True)]

    def _fill_short(self, vectors, k: int, scores: np.ndarray, rows: np.ndarray) -> None:
        """An approximate index tuned for top-10 returns a few hundred hits for k=10,000 (an
        HNSW graph's efSearch, an IVF's nprobe lists bound what one search reaches): queries
        short of k are searched again, wider, then exactly (vlpipe.search.filtered)."""
        short = np.flatnonzero((rows >= 0).sum(axis=1) < k)
        if len(short) == 0:
            return
        from vlpipe.search.filtered import filtered_search

        everything = np.arange(self.size, dtype=np.int64)
        scores[short], rows[short] = filtered_search(
            self._index, vectors[short], k, everything, self.size, exact=False
        )

    def collapsed(self, search, k: int) -> list[list[Hit]]:
        """`search(depth)`'s hits with each near-duplicate cluster once: searched deeper (4x
        per try) until every query has k clusters, or the search reached every image."""
        if self._collapser is None:
            from vlpipe.search.collapse import Collapser

            self._collapser = Collapser.load(self.store, self._idmap)
        k = self._check_k(k)
        depth = min(max(4 * k, k + 40), MAX_K)
        while True:
            results = search(depth)
            out = [self._collapser.collapse(hits, k) for hits in results]
            deeper = any(len(o) < k and len(h) >= depth for o, h in zip(out, results, strict=True))
            if not deeper or depth >= min(MAX_K, self.size):
                return out
            depth = min(4 * depth, MAX_K)

    def filter_rows(self, where: str) -> np.ndarray:
        """Sorted index rows (id map rows) whose run row satisfies the filter `where`; one-line
        VlpipeError when it is malformed or names unknown columns (vlpipe.search.where_rows)."""
        if self._row_filter is None:
            from vlpipe.search.where_rows import RowFilter

            self._row_filter = RowFilter(self.store, self.meta, self._idmap)
        return self._row_filter.rows(where)

    def _check_where(self, where: str | None) -> None:
        """Parse and check a filter against the run's columns (its rows are kept for the
        search that follows): one line for a malformed or hostile one, before any model."""
        if where is not None and where.strip():
            self.filter_rows(where)

    def _search_where(
        self, vectors: np.ndarray, k: int, where: str
    ) -> tuple[np.ndarray, np.ndarray]:
        from vlpipe.search.filtered import filtered_search

        return filtered_search(self._index, vectors, k, self.filter_rows(where), self.size)

    def rows(self):
        """A RowReader over this index's run: hits' columns and embeddings, read on demand."""
        if self._rows is None:
            from vlpipe.search.rows import RowReader

            self._rows = RowReader(self.store, self.meta)
        return self._rows

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

    def _check_mode(self, mode: str | None) -> str:
        if mode is None:
            return self.default_mode
        if mode not in MODES:
            raise VlpipeError(f"unknown search mode {mode!r}: use one of {', '.join(MODES)}")
        if mode != "vector" and not self.has_keywords:
            raise VlpipeError(
                f"the index at {self.store.folder} has no keyword index (built by an older "
                f"vlpipe), so no {mode} search: rebuild it with `vlpipe index <run dir> --rebuild`"
            )
        return mode

    def _search_keywords(
        self, queries: list[str], k: int, where: str | None = None
    ) -> list[list[Hit]]:
        """BM25 hits per query, at most k, only images that hold a query word (and, with
        `where`, whose row satisfies it: BM25 then ranks every row, and the filter picks)."""
        if self._keyword is None:
            self._keyword = self.store.read_keyword(self.meta)
        allowed = self.filter_rows(where) if where is not None and where.strip() else None
        results = []
        depth = self.size if allowed is not None else min(k, self.size)
        for rows, scores in self._keyword.search(queries, depth):
            if allowed is not None:
                keep = np.isin(rows, allowed)
                rows, scores = rows[keep][:k], scores[keep][:k]
            hits = self._hits(scores, rows)
            for hit in hits:
                hit.found_by = "keyword"
            results.append(hits)
        return results

    def _search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        with threads_for(len(vectors)):
            return self._index.search(vectors, k)

    def _hits(self, scores: np.ndarray, rows: np.ndarray) -> list[Hit]:
        found = rows >= 0  # approximate indexes may return fewer than k
        rows, scores = rows[found], scores[found]
        picked = self._idmap.take(rows).to_pydict()
        columns = (picked["image_id"], picked["uri"], picked["caption"], rows.tolist())
        return [
            Hit(rank + 1, float(score), image_id, uri, caption, row=row)
            for rank, (score, image_id, uri, caption, row) in enumerate(
                zip(scores, *columns, strict=True)
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
