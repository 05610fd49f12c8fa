"""The keyword index beside a FAISS index: BM25 over each row's caption and alt text.

Document i is row i of the id map (so a keyword hit is the same row as a vector hit): its
`caption` and its `text` (alt text from the source, often null) joined. Words are lower-cased runs
of letters and digits (vlpipe.models.tokenize, the tokenisation the caption metrics use), less
bm25s's built-in English stopwords ("a", "on", "the", ...): no stemmer (so "dogs" does not match
"dog"), no downloads, nothing fetched at build or query time. Scoring is bm25s's default
(Lucene BM25, k1 1.5, b 0.75).

Files: `keyword-<gen>/`, a folder written by `bm25s.BM25.save` (the CSC score matrix as .npy
files, the vocabulary and the parameters as JSON), named in meta.json's files["keyword"]. bm25s
reads and writes local folders only: on other filesystems the folder is staged through a local
temporary one.

Cost: bm25s indexes have no `add`, so every index generation rebuilds the keyword index from the
whole id map, also when `vlpipe index` adds a few parts to a large index: 14 s and ~450 MB more
peak memory per million 11-word captions on this project's 2-core machine (tokenising in Python
dominates), beside the FAISS add and the id map rewrite that an update costs anyway. A query
scores every row (~25 ms at a million rows, 0.1 ms at a thousand). bm25s is imported only here,
and this module only when a build writes a generation or a search first needs keywords (`import
bm25s` costs ~0.3 s).
"""

from __future__ import annotations

import os
import posixpath
import tempfile
import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from vlpipe.models.tokenize import tokenize
from vlpipe.storage import is_object_store

PREFIX = "keyword-"
#: what meta.json["keyword"]["tokenizer"] records
TOKENIZER = "lowercase letter/digit runs, bm25s English stopwords removed"
#: documents tokenised per step of a build (bounds the transient list of Python strings)
BUILD_STEP = 65536


def _stopwords() -> frozenset[str]:
    from bm25s.stopwords import STOPWORDS_EN

    return frozenset(STOPWORDS_EN)


def words(text: str, stopwords: frozenset[str]) -> list[str]:
    """The words of `text` that the index knows words by."""
    return [w for w in tokenize(text).split() if w not in stopwords]


@dataclass
class KeywordIndex:
    """A BM25 index whose document ids are id map rows."""

    bm25: object  # bm25s.BM25
    count: int
    seconds: float = 0.0  # build time

    # ---- building ------------------------------------------------------------------------------

    @classmethod
    def build(cls, idmap: pa.Table) -> KeywordIndex:
        """Index every row of `idmap` (its `caption`, and `text` where the id map has it)."""
        bm25s = _bm25s()

        start = time.perf_counter()
        stopwords = _stopwords()
        vocab: dict[str, int] = {"": 0}  # bm25s's empty token; no document holds it
        ids: list[list[int]] = []
        has_text = "text" in idmap.column_names
        for offset in range(0, idmap.num_rows, BUILD_STEP):
            rows = idmap.slice(offset, BUILD_STEP)
            captions = rows.column("caption").to_pylist()
            texts = rows.column("text").to_pylist() if has_text else [None] * len(captions)
            for caption, text in zip(captions, texts, strict=True):
                doc = f"{caption or ''} {text or ''}"
                ids.append([vocab.setdefault(w, len(vocab)) for w in words(doc, stopwords)])
        # bm25s's defaults throughout (NumPy scoring, Lucene BM25): keyword arguments that
        # bm25s 0.2 has too; `vocab` holds the empty token already, so none is added
        bm25 = bm25s.BM25()
        with np.errstate(invalid="ignore", divide="ignore"):  # every document empty: 0/0
            bm25.index((ids, vocab), show_progress=False)
        return cls(bm25, idmap.num_rows, round(time.perf_counter() - start, 3))

    def describe(self) -> dict:
        """meta.json's "keyword" entry."""
        return {
            "library": "bm25s",
            "tokenizer": TOKENIZER,
            "documents": self.count,
            "vocabulary": len(self.bm25.vocab_dict) - 1,
            "build_seconds": self.seconds,
        }

    def save(self, fs, path: str, local: bool) -> None:
        """Write the folder `path`; on a local filesystem to a temp name, then renamed."""
        folder, name = posixpath.split(path)
        if local:
            from vlpipe.rundir import TMP_PREFIX

            tmp = posixpath.join(folder, TMP_PREFIX + name)
            self.bm25.save(tmp)
            os.replace(tmp, path)
            return
        with tempfile.TemporaryDirectory() as tmp:
            self.bm25.save(tmp)
            if not is_object_store(fs):  # object stores have no folders to make
                fs.makedirs(path, exist_ok=True)
            for entry in sorted(os.listdir(tmp)):
                fs.put_file(os.path.join(tmp, entry), posixpath.join(path, entry))

    # ---- reading -------------------------------------------------------------------------------

    @classmethod
    def load(cls, fs, path: str, local: bool, count: int) -> KeywordIndex:
        """The folder at `path` (memory-mapped when local); a ValueError when it does not hold
        `count` documents."""
        bm25s = _bm25s()

        if local:
            bm25 = bm25s.BM25.load(path, mmap=True)
        else:
            with tempfile.TemporaryDirectory() as tmp:
                for remote in fs.ls(path, detail=False):
                    fs.get_file(remote, os.path.join(tmp, posixpath.basename(remote)))
                bm25 = bm25s.BM25.load(tmp, mmap=False)
        if bm25.scores["num_docs"] != count:
            raise ValueError(f"it holds {bm25.scores['num_docs']} documents, the id map {count}")
        return cls(bm25, count)

    def rarest_share(self, queries: list[str]) -> list[float]:
        """Per query, the share of documents that hold its rarest known word (1.0 when it has
        none): how much a keyword match says. A made-up product name is in 1% of rows; the
        words of an everyday caption are in many."""
        stopwords = _stopwords()
        vocab = self.bm25.vocab_dict
        indptr = np.asarray(self.bm25.scores["indptr"])
        out = []
        for query in queries:
            ids = [vocab[w] for w in words(query, stopwords) if w in vocab]
            counts = [int(indptr[i + 1] - indptr[i]) for i in ids]
            out.append(min(counts) / max(self.count, 1) if counts else 1.0)
        return out

    def search(self, queries: list[str], depth: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """(rows, BM25 scores) per query, best first, at most `depth` rows: only rows that hold
        at least one query word, so a query of unknown words (or stopwords only) gets none."""
        stopwords = _stopwords()
        vocab = self.bm25.vocab_dict
        tokens = [[w for w in words(q, stopwords) if w in vocab] for q in queries]
        asked = [i for i, t in enumerate(tokens) if t]
        none = (np.empty(0, np.int64), np.empty(0, np.float32))
        out = [none] * len(queries)
        if not asked:
            return out
        depth = min(depth, self.count)
        docs, scores = self.bm25.retrieve(
            [tokens[i] for i in asked],
            k=depth,
            sorted=True,
            show_progress=False,
            n_threads=0,
            backend_selection="numpy",
        )
        for i, row_ids, row_scores in zip(asked, docs, scores, strict=True):
            matched = row_scores > 0
            out[i] = (row_ids[matched].astype(np.int64), row_scores[matched])
        return out


def _bm25s():
    """bm25s, imported on first use (0.3 s), its logger kept to warnings: it sets itself to
    DEBUG, and its "Building index" lines would reach every user's terminal."""
    import logging

    import bm25s

    logging.getLogger("bm25s").setLevel(logging.WARNING)
    return bm25s
