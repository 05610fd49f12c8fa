"""Hits with the run's columns and embeddings, k up to 10,000 into a Parquet file, API paging,
and the page's filter field: what `vlpipe search --json/--output` and `/api/search` hand back."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from tests.helpers.runs import make_run
from tests.helpers.where_run import write_run
from vlpipe.errors import VlpipeError
from vlpipe.index.build import build_index
from vlpipe.rundir import RunDir
from vlpipe.search.results import attach, hits_table, write_hits
from vlpipe.search.searcher import Searcher


@pytest.fixture(scope="module")
def indexed(tmp_path_factory):
    out = tmp_path_factory.mktemp("outputs") / "run"
    first = write_run(str(out))
    build_index(str(out), progress=False)
    return out, first


def stored_embeddings(out) -> dict[str, np.ndarray]:
    """Every row's embedding as the parts hold it (first copy of a duplicated id)."""
    found: dict[str, np.ndarray] = {}
    for batch in RunDir(str(out)).iter_batches(["image_id", "embedding"]):
        flat = batch.column(1).flatten().to_numpy(zero_copy_only=False).astype(np.float32)
        matrix = flat.reshape(batch.num_rows, -1)
        for i, image_id in enumerate(batch.column(0).to_pylist()):
            found.setdefault(image_id, matrix[i])
    return found


def test_hits_carry_their_columns_and_stored_embeddings(indexed):
    out, first = indexed
    searcher = Searcher.open(str(out))
    query = np.random.default_rng(0).standard_normal((2, searcher.dim)).astype(np.float32)
    results = searcher.search_vectors(query, 50)
    attach(searcher.rows(), results, ["license", "views", "crawled", "tags"], embeddings=True)
    stored = stored_embeddings(out)
    for hit in (h for hits in results for h in hits):
        row = first[hit.image_id]
        assert hit.columns == {k: row.get(k) for k in ("license", "views", "crawled", "tags")}
        assert np.array_equal(hit.embedding, stored[hit.image_id])
        # the score is the cosine to the stored (float16) vector, up to rounding
    as_json = json.loads(json.dumps(results[0][0].to_dict()))
    assert as_json["columns"]["crawled"] == first[results[0][0].image_id]["crawled"].isoformat()
    assert len(as_json["embedding"]) == searcher.dim
    with pytest.raises(Exception, match="unknown column 'nope'"):
        attach(searcher.rows(), results, ["nope"])


def test_ten_thousand_hits_per_query_into_parquet(indexed, tmp_path):
    out, first = indexed
    searcher = Searcher.open(str(out))
    query = np.random.default_rng(1).standard_normal((2, searcher.dim)).astype(np.float32)
    results = searcher.search_vectors(query, 10_000)
    assert [len(h) for h in results] == [searcher.size] * 2  # the index holds fewer
    attach(searcher.rows(), results, ["score", "license"], embeddings=True)
    path = tmp_path / "hits.parquet"
    write_hits(str(path), hits_table(["q0", "q1"], results, ["score", "license"]))
    table = pq.read_table(path)
    assert table.num_rows == 2 * searcher.size
    assert table.column_names[:7] == [
        "query", "rank", "score", "image_id", "uri", "caption", "found_by",
    ]  # fmt: skip
    assert table.schema.field("license").type == pa.string()
    assert pa.types.is_fixed_size_list(table.schema.field("embedding").type)
    rows = table.slice(0, 300).to_pylist()
    assert [r["rank"] for r in rows] == list(range(1, 301)) and rows[0]["query"] == "q0"
    for r in rows:
        assert r["license"] == first[r["image_id"]].get("license")


def test_api_pages_filters_and_returns_embeddings(indexed, tmp_path):
    pytest.importorskip("starlette", reason="needs the 'serve' extra")
    from starlette.testclient import TestClient

    from vlpipe.serve.app import SearchService, create_app
    from vlpipe.serve.thumbnails import ThumbnailCache

    out, first = indexed
    searcher = Searcher.open(str(out))
    vector = np.random.default_rng(2).standard_normal(searcher.dim).astype(np.float32)
    # text queries need an embedder; the API's paging and extras are the same for any query:
    # answer "text" with a fixed vector through the searcher's own vector search
    searcher.search_text = lambda queries, k, mode=None, where=None: searcher.search_vectors(
        vector, k, where=where
    )
    app = create_app(searcher, ThumbnailCache(tmp_path / "thumbs"))
    with TestClient(app, raise_server_exceptions=False) as client:
        whole = client.get("/api/search", params={"q": "x", "k": 60}).json()["results"]
        page = client.get("/api/search", params={"q": "x", "k": 20, "offset": 40}).json()
        assert [h["image_id"] for h in page["results"]] == [h["image_id"] for h in whole[40:]]
        assert [h["rank"] for h in page["results"]] == list(range(41, 61))
        got = client.get(
            "/api/search",
            params={"q": "x", "k": 5, "where": "license = 'cc0'", "embeddings": 1,
                    "columns": "license,views"},
        ).json()["results"]  # fmt: skip
        assert len(got) == 5 and all(h["columns"]["license"] == "cc0" for h in got)
        assert all(h["columns"]["views"] == first[h["image_id"]]["views"] for h in got)
        stored = stored_embeddings(out)
        for h in got:
            assert np.allclose(h["embedding"], stored[h["image_id"]], atol=1e-6)
        bad = client.get("/api/search", params={"q": "x", "where": "read_csv('/etc/passwd')"})
        assert bad.status_code == 400 and "functions are not allowed" in bad.json()["error"]
        unknown = client.get("/api/search", params={"q": "x", "where": "nope = 1"})
        assert unknown.status_code == 400 and "nope" in unknown.json()["error"]
        assert (
            client.get("/api/search", params={"q": "x", "offset": 9995, "k": 10}).status_code == 400
        )
    assert SearchService  # imported for the type the app wraps


def test_cli_output_and_one_line_refusals(indexed, tmp_path):
    from vlpipe.cli import main

    out, _ = indexed
    runner = CliRunner()
    result = runner.invoke(main, ["search", "dog", "--index", str(out), "-k", "1001"])
    assert result.exit_code == 1 and "up to 10000 with --output" in result.output
    result = runner.invoke(
        main, ["search", "dog", "--index", str(out), "--where", "license = 1; DROP TABLE x"]
    )
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert "stacked statements are not allowed" in result.output  # not the model's error


def test_a_hostile_filter_is_refused_before_any_model_loads(indexed):
    """The run's embedder cannot load here (a synthetic run): the filter's refusal must come
    first, for text and image queries, with no model loaded."""
    from PIL import Image

    searcher = Searcher.open(str(indexed[0]))
    for search in (
        lambda w: searcher.search_text(["dog"], 3, where=w),
        lambda w: searcher.search_text(["dog"], 3, mode="hybrid", where=w),
        lambda w: searcher.search_image([Image.new("RGB", (8, 8))], 3, where=w),
    ):
        with pytest.raises(VlpipeError, match="stacked statements are not allowed"):
            search("license = 'a'; DROP TABLE x")
        with pytest.raises(VlpipeError, match="unknown column 'nope'"):
            search("nope = 1")
    assert searcher._embedder is None and searcher._text_queries is None


@pytest.mark.parametrize("kind", ["hnsw", "ivfsq"])
def test_an_approximate_index_returns_all_k_hits_for_a_large_k(tmp_path, kind):
    """Tuned for top-10, one HNSW or IVF search reaches a few hundred rows; k=3,000 must still
    give 3,000, the same set as an exact search."""
    make_run(tmp_path / "run", 4000, dim=16)
    assert build_index(str(tmp_path / "run"), progress=False, kind=kind)["kind"] == kind
    searcher = Searcher.open(str(tmp_path / "run"))
    query = np.random.default_rng(3).standard_normal((2, 16)).astype(np.float32)
    results = searcher.search_vectors(query, 3000)
    assert [len(hits) for hits in results] == [3000, 3000]
    assert all(len({h.image_id for h in hits}) == 3000 for hits in results)
