"""A search hit, and how two rankings of hits become one (weighted reciprocal rank fusion)."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from vlpipe.search.results import jsonable

__all__ = ["COMMON_WEIGHT", "RARE_SHARE", "RARE_WEIGHT", "RRF_DEPTH", "RRF_K", "Hit", "fuse"]

#: weighted reciprocal rank fusion (Cormack, Clarke & Buettcher, SIGIR 2009): a hybrid hit
#: scores, over the two rankings that hold it, 1 / (RRF_K + vector rank) + w / (RRF_K + keyword
#: rank), ranks counted from 1, each ranking taken to depth max(k, RRF_DEPTH). The keyword
#: weight w says how much a keyword match means for this query: RARE_WEIGHT when the query's
#: rarest word is in at most RARE_SHARE of the rows (a product name, a brand: the vector side
#: cannot know it, the keyword side finds exactly those rows), COMMON_WEIGHT otherwise (everyday
#: words: BM25 over captions is a weak ranker, bench/hybrid.py, so it only breaks ties)
RRF_K = 60
RRF_DEPTH = 100
RARE_SHARE = 0.02
RARE_WEIGHT = 4.0
COMMON_WEIGHT = 0.1


@dataclass
class Hit:
    rank: int
    score: float
    image_id: str
    uri: str
    caption: str | None
    #: which ranking found the hit: "vector", "keyword" or, in hybrid mode, "both"
    found_by: str = "vector"
    row: int = -1  # the index row (= id map row): where columns and the embedding are found
    columns: dict | None = None  # run columns asked for (vlpipe.search.results.attach)
    embedding: np.ndarray | None = None  # the stored vector, when asked for
    #: with dedup: how many other copies the hit's near-duplicate cluster holds
    duplicates: int | None = None

    def to_dict(self) -> dict:
        out = {
            "rank": self.rank,
            "score": round(self.score, 6),
            "image_id": self.image_id,
            "uri": self.uri,
            "caption": self.caption,
            "found_by": self.found_by,
        }
        if self.duplicates is not None:
            out["duplicates"] = self.duplicates
        if self.columns is not None:
            out["columns"] = {k: jsonable(v) for k, v in self.columns.items()}
        if self.embedding is not None:
            out["embedding"] = [round(float(x), 6) for x in self.embedding]
        return out


def fuse(
    by_vector: list[Hit], by_keyword: list[Hit], k: int, keyword_weight: float = 1.0
) -> list[Hit]:
    """Weighted reciprocal rank fusion of one query's two rankings (each best first, ranks from
    1): an image scores the sum of weight / (RRF_K + rank) over the rankings that hold it (the
    vector ranking's weight is 1), and is found_by "both" when both do. Ties keep the vector
    ranking's order, then the keyword ranking's. Images are told apart by image_id, which is
    unique in an index."""
    fused: dict[str, list] = {}
    for source, hits in (("vector", by_vector), ("keyword", by_keyword)):
        weight = keyword_weight if source == "keyword" else 1.0
        for hit in hits:
            entry = fused.setdefault(hit.image_id, [0.0, hit, []])
            entry[0] += weight / (RRF_K + hit.rank)
            entry[2].append(source)
    ordered = sorted(fused.values(), key=lambda entry: -entry[0])  # stable
    return [
        replace(hit, rank=rank, score=score, found_by="both" if len(found) == 2 else found[0])
        for rank, (score, hit, found) in enumerate(ordered[:k], 1)
    ]
