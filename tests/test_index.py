"""Index build, incremental update and search over real Parquet run dirs of synthetic vectors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from bench.synthetic import clustered_vectors
from tests.helpers.runs import make_run, write_manifest, write_part
from tests.helpers.vectors import stored_vectors
from vlpipe.errors import VlpipeError
from vlpipe.index.build import build_index
from vlpipe.index.select import FLAT_THRESHOLD, parse_memory, plan_index
from vlpipe.index.tune import make_queries, recall_at_k
from vlpipe.rundir import RunDir
from vlpipe.schema import image_id
from vlpipe.search.searcher import Searcher

DIM = 32


@pytest.fixture(autouse=True)
def _faiss_threads(one_faiss_thread):
    """One FAISS thread in every test here (see tests/conftest.py)."""


def brute_force(x: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    scores = q @ x.T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, axis=1), order


def hit_ids(results) -> list[list[str]]:
    return [[h.image_id for h in hits] for hits in results]


# ---- exact search ----


def test_flat_index_equals_numpy_brute_force(tmp_path):
    run = make_run(str(tmp_path / "out"), 3000, dim=DIM, part_rows=1000)
    meta = build_index(run.path, progress=False)
    assert (meta["kind"], meta["count"], meta["recall_at_10"]) == ("flat", 3000, 1.0)
    assert meta["parts"] == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]

    x, ids = stored_vectors(run.path)
    queries = np.random.default_rng(7).standard_normal((20, DIM))
    want_scores, want_rows = brute_force(x, queries, 10)
    results = Searcher.open(run.path).search_vectors(queries, 10)
    assert hit_ids(results) == [[ids[r] for r in rows] for rows in want_rows]
    got_scores = np.array([[h.score for h in hits] for hits in results])
    np.testing.assert_allclose(got_scores, want_scores, atol=1e-5)
    first = results[0][0]
    assert first.rank == 1 and first.uri.startswith("synthetic/") and first.caption


def test_searcher_opens_run_dir_or_index_dir_and_maps_ids(tmp_path):
    run = make_run(str(tmp_path / "out"), 500, dim=DIM, part_rows=500)
    build_index(run.path, progress=False)
    by_run, by_index = Searcher.open(run.path), Searcher.open(str(tmp_path / "out" / "index"))
    assert by_run.size == by_index.size == 500
    x, ids = stored_vectors(run.path)
    hit = by_index.search_vectors(x[42], 1)[0][0]
    assert hit.image_id == ids[42] and hit.score == pytest.approx(1.0, abs=1e-5)
    assert by_run.uri_of(ids[42]) == hit.uri
    assert by_run.uri_of("0" * 20) is None
    # k above the index size returns every vector; k outside 1..10,000 is refused
    assert len(by_run.search_vectors(x[:1], 1000)[0]) == 500
    for k in (0, 10_001):
        with pytest.raises(VlpipeError, match="k must be between 1 and 10000"):
            by_run.search_vectors(x[:1], k)
    with pytest.raises(VlpipeError, match="dimension"):
        by_run.search_vectors(np.ones((1, DIM + 1)), 5)


# ---- approximate search ----


def test_flat_grows_into_tuned_hnsw_with_high_recall(tmp_path):
    """15k vectors: exact; 10k more: auto switches to HNSW (a rebuild), tuned to recall >= 0.95."""
    out = str(tmp_path / "out")
    run = make_run(out, 15_000, dim=DIM, part_rows=5000)
    assert build_index(out, progress=False)["kind"] == "flat"
    more = clustered_vectors(10_000, DIM, seed=0, chunk=10_000)  # same clusters, new draws
    write_part(run, "part-00009.parquet", more, [f"more/{i}.jpg" for i in range(10_000)])
    write_manifest(run, DIM, 25_000)

    meta = build_index(out, progress=False)
    assert meta["kind"] == "hnsw" and meta["count"] == 25_000
    assert meta["last_action"]["action"] == "built"
    assert "call for hnsw" in meta["last_action"]["reason"]
    assert meta["recall_at_10_lower_bound"] >= 0.95 and meta["search_params"]["efSearch"] >= 16

    x, ids = stored_vectors(out)
    queries = make_queries(x[np.random.default_rng(3).choice(len(x), 300)], seed=11)
    _, want = brute_force(x, queries, 10)
    got = hit_ids(Searcher.open(out).search_vectors(queries, 10))
    index_of = {i: n for n, i in enumerate(ids)}
    found = np.array([[index_of[i] for i in row] for row in got])
    assert recall_at_k(found, want) >= 0.9


@pytest.mark.parametrize("kind", ["ivfsq", "ivfpq"])
def test_ivf_kinds_train_and_reach_their_recorded_recall(tmp_path, kind):
    out = str(tmp_path / "out")
    make_run(out, 12_000, dim=DIM, part_rows=6000)
    # IVF-PQ under a budget that leaves PQ8 (8 bytes for 32 dimensions): a quick PQ to train
    budget = 300_000 if kind == "ivfpq" else None
    meta = build_index(out, kind=kind, memory_budget=budget, progress=False)
    assert meta["kind"] == kind
    assert meta["factory"].endswith("SQfp16" if kind == "ivfsq" else "PQ8x8np")
    assert meta["trained_count"] == 12_000 and "nprobe" in meta["search_params"]
    if kind == "ivfsq":
        assert meta["recall_at_10"] >= 0.95

    x, ids = stored_vectors(out)
    queries = make_queries(x[np.random.default_rng(4).choice(len(x), 300)], seed=12)
    _, want = brute_force(x, queries, 10)
    index_of = {i: n for n, i in enumerate(ids)}
    got = hit_ids(Searcher.open(out).search_vectors(queries, 10))
    found = np.array([[index_of[i] for i in row] for row in got])
    # held-out queries land close to the recall the tuner measured on its own queries
    recall = recall_at_k(found, want)
    assert recall >= meta["recall_at_10"] - 0.05
    if kind == "ivfsq":
        assert recall >= 0.9


# ---- incremental ----


def add_part(run: RunDir, n: int, name: str, seed: int, reuse: list[str] = ()) -> list[str]:
    """A new part: `reuse` uris already in the run (duplicate image ids) plus n fresh ones."""
    uris = list(reuse) + [f"new/{seed}/{i}.jpg" for i in range(n)]
    vectors = clustered_vectors(len(uris), DIM, seed=seed)
    write_part(run, name, vectors, uris)
    return uris


def test_incremental_add_equals_full_rebuild_without_rereading_old_parts(tmp_path):
    inc = make_run(str(tmp_path / "inc"), 2000, dim=DIM, part_rows=1000)
    build_index(inc.path, progress=False)
    # the old parts become unreadable: an incremental add must not need them
    fresh = tmp_path / "fresh"
    shutil.copytree(tmp_path / "inc", fresh)
    for part in ("part-00000.parquet", "part-00001.parquet"):
        (tmp_path / "inc" / "parts" / part).write_bytes(b"overwritten")
    dupes = [f"synthetic/0/{i:08d}.jpg" for i in (5, 1500)]
    for run in (inc, RunDir(str(fresh))):
        add_part(run, 300, "part-00002.parquet", seed=5, reuse=dupes)

    meta = build_index(inc.path, progress=False)
    action = meta["last_action"]
    assert (action["action"], action["added"], action["duplicates_skipped"]) == ("added", 300, 2)
    assert meta["count"] == 2300 and len(meta["parts"]) == 3
    full = build_index(str(fresh), rebuild=True, progress=False)
    assert full["count"] == 2300 and full["last_action"]["reason"] == "requested"

    queries = np.random.default_rng(9).standard_normal((25, DIM))
    a = Searcher.open(inc.path).search_vectors(queries, 10)
    b = Searcher.open(str(fresh)).search_vectors(queries, 10)
    assert hit_ids(a) == hit_ids(b)
    np.testing.assert_allclose([h.score for r in a for h in r], [h.score for r in b for h in r])


def test_incremental_add_to_hnsw_updates_tuning_without_duplicates(tmp_path):
    out = str(tmp_path / "out")
    run = make_run(out, 21_000, dim=DIM, part_rows=7000)
    first = build_index(out, progress=False)
    assert first["kind"] == "hnsw"
    add_part(run, 2000, "part-00005.parquet", seed=8, reuse=["synthetic/0/00000003.jpg"])
    meta = build_index(out, progress=False)
    assert meta["last_action"]["action"] == "added" and meta["count"] == 23_000
    assert meta["last_action"]["duplicates_skipped"] == 1
    assert meta["recall_at_10"] >= 0.95 and meta["built"] == first["built"]
    ids = Searcher.open(out)._idmap.column("image_id").to_pylist()
    assert len(ids) == len(set(ids)) == 23_000
    assert build_index(out, progress=False)["last_action"] == {"action": "up-to-date"}


def test_rebuilds_when_embedder_changes_or_a_part_disappears(tmp_path):
    out = str(tmp_path / "out")
    run = make_run(out, 1000, dim=DIM, part_rows=500)
    build_index(out, progress=False)
    write_manifest(run, DIM, 1000, {"name": "other", "config": {"seed": 2}})
    meta = build_index(out, progress=False)
    assert meta["last_action"]["reason"] == "the run's embedder changed"
    assert meta["embedder"]["name"] == "other"
    (tmp_path / "out" / "parts" / "part-00001.parquet").unlink()
    meta = build_index(out, progress=False)
    assert "no longer in the run" in meta["last_action"]["reason"] and meta["count"] == 500


def test_explicit_kind_sticks_through_auto_updates(tmp_path):
    out = str(tmp_path / "out")
    run = make_run(out, 1000, dim=DIM, part_rows=1000)
    assert build_index(out, kind="hnsw", progress=False)["kind"] == "hnsw"
    add_part(run, 200, "part-00001.parquet", seed=3)
    meta = build_index(out, progress=False)  # the pipeline calls with kind="auto"
    assert meta["kind"] == "hnsw" and meta["last_action"]["action"] == "added"


# ---- bad input ----


def test_corrupt_parts_and_invalid_rows_are_skipped_and_reported(tmp_path):
    out = str(tmp_path / "out")
    run = make_run(out, 1000, dim=DIM, part_rows=500)
    (tmp_path / "out" / "parts" / "part-00001.parquet").write_bytes(b"PAR1 garbage")
    # a part with a NaN embedding and a zero vector among good rows (Parquet cannot hold a null
    # fixed-size list: pyarrow refuses to read one back, so such a part counts as corrupt)
    uris = [f"odd/{i}.jpg" for i in range(4)]
    vectors = np.random.default_rng(0).standard_normal((4, DIM)).astype(np.float16)
    vectors[1, 3], vectors[2] = np.nan, 0
    write_part(run, "part-00002.parquet", vectors, uris)

    meta = build_index(out, progress=False)
    action = meta["last_action"]
    assert meta["count"] == 500 + 2
    assert action["invalid_skipped"] == 2 and action["corrupt_parts"] == ["part-00001.parquet"]
    assert "part-00001.parquet" not in meta["parts"]  # retried by the next call
    again = build_index(out, progress=False)
    assert again["last_action"]["corrupt_parts"] == ["part-00001.parquet"]
    assert again["count"] == 502
    searcher = Searcher.open(out)
    assert searcher.uri_of(image_id("odd/0.jpg")) == "odd/0.jpg"
    assert searcher.uri_of(image_id("odd/1.jpg")) is None


def test_a_part_that_breaks_mid_read_is_reported_once(tmp_path):
    """Footer intact, pages zeroed: counted from its footer, then unreadable in both passes
    (sampling and adding) of an approximate build."""
    out = str(tmp_path / "out")
    make_run(out, 3000, dim=DIM, part_rows=1000)
    rotten = tmp_path / "out" / "parts" / "part-00001.parquet"
    data = bytearray(rotten.read_bytes())
    data[4 : len(data) // 2] = bytes(len(data) // 2 - 4)
    rotten.write_bytes(bytes(data))
    meta = build_index(out, kind="hnsw", progress=False)
    assert meta["last_action"]["corrupt_parts"] == ["part-00001.parquet"]
    assert meta["count"] == 2000 and "part-00001.parquet" not in meta["parts"]


def test_build_errors_are_one_line(tmp_path):
    with pytest.raises(VlpipeError, match="no run directory"):
        build_index(str(tmp_path / "nope"), progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(VlpipeError, match="no manifest.json"):
        build_index(str(tmp_path / "empty"), progress=False)
    make_run(tmp_path / "empty", 0, dim=DIM)
    with pytest.raises(VlpipeError, match="no embeddings to index"):
        build_index(str(tmp_path / "empty"), progress=False)
    run = make_run(str(tmp_path / "wrong"), 100, dim=DIM)
    write_manifest(run, 64, 100)
    with pytest.raises(VlpipeError, match="dimension 32.*has 64"):
        build_index(run.path, progress=False)
    with pytest.raises(VlpipeError, match="unknown index kind"):
        build_index(str(tmp_path / "wrong"), kind="lsh", progress=False)


def test_missing_or_corrupt_index_is_refused_then_repaired(tmp_path):
    with pytest.raises(VlpipeError, match="does not exist"):
        Searcher.open(str(tmp_path / "nope"))
    run = make_run(str(tmp_path / "out"), 300, dim=DIM)
    with pytest.raises(VlpipeError, match="build one with `vlpipe index"):
        Searcher.open(run.path)
    index_dir = tmp_path / "out" / "index"

    def index_file() -> Path:
        return index_dir / json.loads((index_dir / "meta.json").read_text())["files"]["index"]

    build_index(run.path, progress=False)
    index_file().write_bytes(index_file().read_bytes()[:100])
    with pytest.raises(VlpipeError, match="corrupt or missing index file") as err:
        Searcher.open(run.path)
    assert "\n" not in str(err.value)
    # an update that cannot read the old index rebuilds it
    add_part(run, 5, "part-00009.parquet", seed=2)
    repaired = build_index(run.path, progress=False)
    assert repaired["last_action"]["action"] == "built" and repaired["count"] == 305
    assert "unreadable" in repaired["last_action"]["reason"]

    index_file().unlink()
    with pytest.raises(VlpipeError, match="corrupt or missing index file"):
        Searcher.open(run.path)
    assert "is missing" in build_index(run.path, progress=False)["last_action"]["reason"]

    (index_dir / "meta.json").write_text("{not json")
    with pytest.raises(VlpipeError, match="corrupt index metadata"):
        Searcher.open(run.path)
    assert build_index(run.path, progress=False)["last_action"]["action"] == "built"
    assert Searcher.open(run.path).size == 305


def test_a_build_leaves_one_generation_and_no_temp_files(tmp_path):
    run = make_run(str(tmp_path / "out"), 300, dim=DIM, part_rows=100)
    build_index(run.path, progress=False)
    add_part(run, 10, "part-00007.parquet", seed=1)
    meta = build_index(run.path, progress=False)
    names = sorted(p.name for p in (tmp_path / "out" / "index").iterdir())
    assert names == sorted(["meta.json", *meta["files"].values()])
    on_disk = json.loads((tmp_path / "out" / "index" / "meta.json").read_text())
    assert on_disk["count"] == meta["count"] == 310


def test_index_on_an_fsspec_filesystem(tmp_path):
    """faiss writes local files only: remote run dirs go through serialised bytes."""
    url = f"memory://vlpipe-test-{tmp_path.name}/out"
    run = make_run(url, 2000, dim=DIM, part_rows=1000)
    meta = build_index(url, kind="hnsw", progress=False)
    assert meta["count"] == 2000 and run.fs.exists(run.join("index", meta["files"]["index"]))
    x, ids = stored_vectors(url)
    hits = Searcher.open(url).search_vectors(x[:3], 1)
    assert [h[0].image_id for h in hits] == ids[:3]
    run.fs.rm(run.root, recursive=True)


# ---- kind selection ----


def test_kind_selection_follows_size_and_memory_budget():
    gb = 1024**3
    assert plan_index(FLAT_THRESHOLD - 1, 256, budget=gb).kind == "flat"
    hnsw = plan_index(150_000, 256, budget=gb)
    assert (hnsw.kind, hnsw.factory) == ("hnsw", "HNSW32,SQfp16")
    assert plan_index(150_000, 256, budget=gb, fp16=False).factory == "HNSW32,Flat"
    tight = plan_index(150_000, 256, budget=100 * 1024**2)  # M=32 does not fit, M=20 does
    assert tight.kind == "hnsw" and 8 <= tight.params["M"] < 32
    assert tight.estimated_bytes <= 100 * 1024**2
    # large corpora: IVF lists with an HNSW quantizer, fp16 or SQ8 codes while they fit, else PQ
    fp16 = plan_index(1_000_000, 256, budget=4 * gb)
    assert (fp16.kind, fp16.factory) == ("ivfsq", "IVF4096_HNSW32,SQfp16")
    assert fp16.estimated_bytes <= 600 * 1024**2 and fp16.train_size == 40 * 4096
    sq = plan_index(1_000_000, 256, budget=300 * 1024**2)
    assert (sq.kind, sq.factory) == ("ivfsq", "IVF4096_HNSW32,SQ8")
    assert sq.estimated_bytes <= 300 * 1024**2
    pq = plan_index(1_000_000, 256, budget=100 * 1024**2)
    assert (pq.kind, pq.factory) == ("ivfpq", "IVF4096_HNSW32,PQ64x8np")
    assert pq.estimated_bytes <= 100 * 1024**2
    assert plan_index(1_000_000, 256, kind="hnsw", budget=4 * gb).kind == "hnsw"
    with pytest.raises(VlpipeError, match="too small"):
        plan_index(1_000_000, 256, budget=1024**2)
    assert plan_index(50, 256, kind="flat").kind == "flat"


def test_parse_memory():
    assert parse_memory("4GB") == parse_memory("4G") == parse_memory("4gib") == 4 * 1024**3
    assert parse_memory("512MB") == 512 * 1024**2 and parse_memory(1000) == 1000
    assert parse_memory(None) > 0
    for bad in ("lots", "-1GB", "0", "4XB"):
        with pytest.raises(VlpipeError, match="memory budget"):
            parse_memory(bad)
