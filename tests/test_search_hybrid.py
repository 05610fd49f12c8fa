"""Keyword and hybrid search: the BM25 index beside the FAISS one, kept row for row with the id map
through incremental adds, the three modes, found_by, and indexes built before keyword search."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.helpers.paths import REPO
from tests.helpers.runs import write_manifest, write_part
from vlpipe.errors import VlpipeError
from vlpipe.index.build import build_index
from vlpipe.index.store import IndexDir
from vlpipe.rundir import RunDir
from vlpipe.search.hits import COMMON_WEIGHT, RARE_SHARE, RARE_WEIGHT, RRF_K, Hit, fuse
from vlpipe.search.searcher import (
    KEYWORD_DEFAULT,
    Searcher,
)

DIM = 16
WORDS = ("dog", "cat", "grass", "beach", "ball", "child", "street", "bike", "water", "snow")


@pytest.fixture(autouse=True)
def _faiss_threads(one_faiss_thread):
    """One FAISS thread in every test here (see tests/conftest.py)."""


def planted_part(run: RunDir, name: str, n: int, seed: int, special: dict[int, tuple]) -> dict:
    """n rows of random unit vectors and captions of common words; `special` maps a row to
    (caption, alt text) to plant rare words. Returns uri -> vector."""
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    uris = [f"/photos/{name}/{i:04d}.jpg" for i in range(n)]
    captions = [" ".join(["a", *rng.choice(WORDS, 4)]) for _ in range(n)]
    texts: list[str | None] = [None] * n
    for row, (caption, text) in special.items():
        captions[row] = caption or captions[row]
        texts[row] = text
    write_part(run, name, vectors, uris, captions, columns={"text": texts})
    return dict(zip(uris, vectors, strict=True))


class FakeQueries:
    """A text embedder that maps chosen queries to chosen vectors (others: a fixed random one)."""

    def __init__(self, vectors: dict[str, np.ndarray]):
        self.vectors = vectors
        self.other = np.random.default_rng(99).standard_normal(DIM).astype(np.float32)

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        return np.stack([self.vectors.get(t, self.other) for t in texts])


def open_searcher(out, vectors: dict[str, np.ndarray] | None = None) -> Searcher:
    searcher = Searcher.open(str(out))
    searcher._text_queries = FakeQueries(vectors or {})  # the synthetic run has no real embedder
    return searcher


@pytest.fixture
def indexed(tmp_path):
    """300 rows in two parts, indexed in two steps (a build, then an incremental add). A rare word
    sits in one alt text of the first part and in one caption of the second."""
    out = tmp_path / "out"
    run = RunDir(str(out))
    vectors = planted_part(run, "part-00000.parquet", 200, 1, {17: (None, "Zorblax desk lamp")})
    write_manifest(run, DIM, 200)
    first = build_index(str(out), progress=False)
    vectors |= planted_part(run, "part-00001.parquet", 100, 2, {42: ("a quuxite on a table", None)})
    write_manifest(run, DIM, 300)
    second = build_index(str(out), progress=False)
    return {"out": out, "first": first, "second": second, "vectors": vectors}


def test_keyword_index_is_written_and_kept_row_for_row_with_the_id_map(indexed):
    first, second = indexed["first"], indexed["second"]
    store = IndexDir.of_run(RunDir(str(indexed["out"])).fs, str(indexed["out"]))
    assert first["last_action"]["action"] == "built"
    assert first["files"]["keyword"].startswith("keyword-") and first["keyword"]["documents"] == 200
    assert second["last_action"]["action"] == "added" and second["count"] == 300
    assert second["files"]["keyword"] != first["files"]["keyword"]
    assert second["keyword"]["documents"] == 300
    names = sorted(p.name for p in (indexed["out"] / "index").iterdir())
    assert [n for n in names if n.startswith("keyword-")] == [second["files"]["keyword"]]

    idmap = store.read_idmap(second, ["image_id", "uri", "caption", "text"])
    assert idmap.num_rows == 300 == store.read_keyword(second).count
    assert idmap.column("text").to_pylist().count("Zorblax desk lamp") == 1  # kept by the add
    keyword = store.read_keyword(second)
    for word, uri in (
        ("zorblax", "part-00000.parquet/0017"),
        ("quuxite", "part-00001.parquet/0042"),
    ):
        [(rows, scores)] = keyword.search([word], 10)
        assert len(rows) == 1 and scores[0] > 0
        assert idmap.column("uri")[int(rows[0])].as_py() == f"/photos/{uri}.jpg"


def test_modes_and_found_by(indexed):
    lamp = "/photos/part-00000.parquet/0017.jpg"
    far = -indexed["vectors"][lamp]  # a query vector that ranks the lamp last of all 300
    searcher = open_searcher(indexed["out"], {"zorblax": far, "zorblax lamp": -far})
    assert searcher.has_keywords and searcher.default_mode == KEYWORD_DEFAULT

    [by_keyword] = searcher.search_text(["zorblax"], 10, mode="keyword")
    assert [h.uri for h in by_keyword] == [lamp]
    assert by_keyword[0].rank == 1 and by_keyword[0].found_by == "keyword"
    assert by_keyword[0].to_dict()["found_by"] == "keyword"

    [by_vector] = searcher.search_text(["zorblax"], 10, mode="vector")
    assert len(by_vector) == 10 and lamp not in [h.uri for h in by_vector]
    assert {h.found_by for h in by_vector} == {"vector"}

    [hybrid] = searcher.search_text(["zorblax"], 10, mode="hybrid")
    assert len(hybrid) == 10
    found = [h for h in hybrid if h.uri == lamp]
    assert found and found[0].rank == 1 and found[0].found_by == "keyword"  # vector rank 300
    # a word in 1 of 300 rows: the keyword ranking weighs RARE_WEIGHT
    assert found[0].score == pytest.approx(RARE_WEIGHT / (RRF_K + 1))
    others = [h for h in hybrid if h.uri != lamp]
    assert {h.found_by for h in others} == {"vector"}  # no other image holds the word
    assert [h.rank for h in hybrid] == list(range(1, 11))

    # the lamp's own vector as the query: first in both rankings
    [both] = searcher.search_text(["zorblax lamp"], 5, mode="hybrid")
    assert both[0].uri == lamp and both[0].found_by == "both"
    assert both[0].score == pytest.approx((1 + RARE_WEIGHT) / (RRF_K + 1))

    # an everyday word (in many captions): the keyword ranking weighs little, vector leads
    [common] = searcher.search_text(["dog"], 10, mode="hybrid")
    [plain] = searcher.search_text(["dog"], 10, mode="vector")
    share = searcher._keyword.rarest_share(["dog"])[0]
    assert share > RARE_SHARE and COMMON_WEIGHT < 1
    assert len({h.uri for h in common} & {h.uri for h in plain}) >= 8
    assert all(h.score <= (1 + COMMON_WEIGHT) / (RRF_K + 1) for h in common)

    # a rare word of a caption, found the same way
    [quux] = searcher.search_text(["quuxite"], 3, mode="keyword")
    assert [h.uri for h in quux] == ["/photos/part-00001.parquet/0042.jpg"]


def test_keyword_misses_return_no_hits_and_bad_modes_fail(indexed):
    searcher = open_searcher(indexed["out"])
    got = searcher.search_text(["nonexistentword", "a the of", "zorblax"], 5, mode="keyword")
    assert [len(hits) for hits in got] == [0, 0, 1]
    [hybrid] = searcher.search_text(["nonexistentword"], 5, mode="hybrid")
    assert len(hybrid) == 5 and {h.found_by for h in hybrid} == {"vector"}
    with pytest.raises(VlpipeError, match="unknown search mode 'fuzzy'"):
        searcher.search_text(["dog"], 5, mode="fuzzy")
    with pytest.raises(VlpipeError, match="empty query"):
        searcher.search_text([" "], 5, mode="keyword")


def test_an_index_built_before_keyword_search_searches_by_vector(indexed):
    out = indexed["out"]
    folder = out / "index"
    meta = json.loads((folder / "meta.json").read_text())
    # as an older vlpipe wrote it: no keyword folder or entry, no text in the id map
    subprocess.run(["rm", "-r", str(folder / meta["files"].pop("keyword"))], check=True)
    meta.pop("keyword")
    idmap_path = folder / meta["files"]["idmap"]
    pq.write_table(pq.read_table(idmap_path).drop_columns(["text"]), idmap_path)
    (folder / "meta.json").write_text(json.dumps(meta))

    searcher = open_searcher(out)
    assert not searcher.has_keywords and searcher.default_mode == "vector"
    [hits] = searcher.search_text(["zorblax"], 5)
    assert len(hits) == 5 and {h.found_by for h in hits} == {"vector"}
    assert hits == searcher.search_text(["zorblax"], 5, mode="vector")[0]
    for mode in ("keyword", "hybrid"):
        with pytest.raises(VlpipeError, match="no keyword index"):
            searcher.search_text(["zorblax"], 5, mode=mode)

    # new parts arrive: the old index is rebuilt once, with its keyword index
    run = RunDir(str(out))
    planted_part(run, "part-00002.parquet", 10, 3, {})
    meta = build_index(str(out), progress=False)
    assert meta["last_action"]["action"] == "built" and "keyword" in meta["last_action"]["reason"]
    assert meta["keyword"]["documents"] == meta["count"] == 310
    [hits] = open_searcher(out).search_text(["zorblax"], 5, mode="keyword")
    assert [h.uri for h in hits] == ["/photos/part-00000.parquet/0017.jpg"]


def test_fuse_is_reciprocal_rank_fusion():
    def hits(ids, found_by="vector"):
        return [Hit(r, 0.0, i, f"/{i}.jpg", None, found_by=found_by) for r, i in enumerate(ids, 1)]

    fused = fuse(hits(["a", "b", "c"]), hits(["c", "d"], "keyword"), 3)
    assert [h.image_id for h in fused] == ["c", "a", "b"]
    assert fused[0].score == pytest.approx(1 / 63 + 1 / 61) and fused[0].found_by == "both"
    assert fused[1].score == pytest.approx(1 / 61) and fused[1].found_by == "vector"
    assert [h.rank for h in fused] == [1, 2, 3]
    # a tie keeps the vector ranking's order ahead of the keyword one's
    tied = fuse(hits(["a"]), hits(["d"], "keyword"), 5)
    assert [(h.image_id, h.found_by) for h in tied] == [("a", "vector"), ("d", "keyword")]
    assert Hit(1, 0.5, "x", "/x.jpg", None).to_dict()["found_by"] == "vector"  # the default


def test_search_imports_bm25s_only_for_keywords(indexed):
    code = (
        "import sys; from vlpipe.search.searcher import Searcher; import numpy as np\n"
        f"s = Searcher.open({str(indexed['out'])!r})\n"
        f"s.search_vectors(np.ones((1, {DIM}), np.float32), 3)\n"
        "assert 'bm25s' not in sys.modules, 'bm25s imported before a keyword query'\n"
        "s.search_text(['zorblax'], 3, mode='keyword')\n"
        "assert 'bm25s' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=120)
