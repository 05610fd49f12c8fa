"""`vlpipe dedup` on the paths a large run takes: IVF lists for vectors and hashes (made to start
at 1,000 rows here instead of 100,000), planted copies across parts, a cluster bigger than the
16 neighbours a row asks for (its pairs come from a range search), and the incremental run that
outgrows its lists."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import bench.dedup_scale as scale
from tests.helpers.runs import write_part
from vlpipe.dedup import neighbours
from vlpipe.dedup.graph import EMBEDDING
from vlpipe.dedup.run import dedup
from vlpipe.dedup.state import load
from vlpipe.rundir import PARTS, RunDir

ROWS = 6_000
BIG = 30  # near copies of one vector (> neighbours.K), linked by the embedding alone


@pytest.fixture
def ivf(monkeypatch):
    monkeypatch.setattr(neighbours, "EXACT_MAX", 1_000)
    monkeypatch.setattr(scale, "PART_ROWS", 1_500)


def cluster_rows(out) -> np.ndarray:
    return scale._cluster_rows(out)


def add_big_cluster(out, name: str) -> range:
    """BIG rows near one vector, random hashes: only the embedding pairs them."""
    rng = np.random.default_rng(5)
    base = rng.standard_normal(scale.DIM).astype(np.float32)
    x = base + 0.05 * rng.standard_normal((BIG, scale.DIM)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    phash = rng.integers(0, 2**63, BIG, dtype=np.int64).astype(np.uint64)
    uris = [f"big/{i}.jpg" for i in range(BIG)]
    write_part(RunDir(str(out)), name, x, uris, columns={"phash": pa.array(phash)})
    first = sum(pq.read_metadata(p).num_rows for p in sorted((out / PARTS).glob("*.parquet")))
    return range(first - BIG, first)


def test_ivf_finds_planted_copies_and_whole_big_clusters(ivf, tmp_path):
    out = tmp_path / "run"
    scale.write_run(out, ROWS)
    big = add_big_cluster(out, "part-99999.parquet")  # sorts last: its rows are the last ones
    summary = dedup(str(out))
    state = load(RunDir(str(out)))
    assert state.trained_rows == {"vectors": summary["images"], "hashes": summary["images"]}
    pairs = np.load(out / "truth.npz")["pairs"]
    cluster = cluster_rows(out)
    assert (cluster[pairs[:, 0]] == cluster[pairs[:, 1]]).mean() >= 0.97
    assert len({cluster[r] for r in big}) == 1
    # every one of the big cluster's pairs was found, not only each row's 16 nearest
    e = state.edges
    inside = (e.a >= big.start) & (e.b >= big.start) & (e.how == EMBEDDING)
    assert inside.sum() == BIG * (BIG - 1) // 2
    # random vectors and hashes do not chain the corpus together
    assert summary["largest_cluster"] == BIG and summary["clusters"] < 0.05 * summary["images"]


def test_incremental_on_ivf_then_retrain_when_outgrown(ivf, tmp_path):
    out = tmp_path / "run"
    scale.write_run(out, 3_000)
    first = dedup(str(out))
    big = add_big_cluster(out, "part-99999.parquet")
    second = dedup(str(out))
    assert second["run"] == "incremental" and second["queried"]["vectors"] == BIG
    assert len({cluster_rows(out)[r] for r in big}) == 1
    # 4x the rows the lists were trained for: the next dedup starts over
    scale.write_run(tmp_path / "more", 4 * first["images"])
    for p in sorted((tmp_path / "more" / PARTS).glob("*.parquet")):
        p.rename(out / PARTS / f"more-{p.name}")
    third = dedup(str(out))
    assert third["run"] == "asked for a full run" and third["queried"]["vectors"] == third["images"]
