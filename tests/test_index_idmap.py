"""The id map of an index (rows, part and row locations) and captions-only runs, which have no
index: over real Parquet run dirs of synthetic vectors."""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np
import pyarrow.parquet as pq
import pytest

from bench.synthetic import clustered_vectors
from tests.helpers.runs import NO_EMBEDDER, make_run, write_manifest, write_part
from tests.helpers.vectors import stored_vectors
from vlpipe.errors import VlpipeError
from vlpipe.index.build import build_index
from vlpipe.index.store import IDMAP_COLUMNS, IndexDir
from vlpipe.rundir import RunDir
from vlpipe.search.searcher import Searcher

DIM = 32


@pytest.fixture(autouse=True)
def _faiss_threads(one_faiss_thread):
    """One FAISS thread in every test here (see tests/conftest.py)."""


def test_faiss_index_rows_match_id_map(tmp_path):
    """The id map's row i is the FAISS index's row i (reconstructed vector == stored one)."""
    run = make_run(tmp_path / "out", 400, dim=DIM, part_rows=150)
    meta = build_index(run.path, progress=False)
    index = faiss.read_index(str(Path(run.path) / "index" / meta["files"]["index"]))
    x, ids = stored_vectors(run.path)
    assert Searcher.open(run.path)._idmap.column("image_id").to_pylist() == ids
    np.testing.assert_allclose(index.reconstruct_n(0, 400), x, atol=1e-6)


# ---- where each vector's row is, for stored thumbnails ----


def thumbs_part(run: RunDir, name: str, n: int, seed: int, reuse: list[str] = ()) -> list[str]:
    """A part with a thumbnail column (as `--save-thumbnails` writes), `reuse` ids first."""
    uris = list(reuse) + [f"thumbs/{seed}/{i}.jpg" for i in range(n)]
    thumbs = [f"jpeg of {u}".encode() for u in uris]
    write_part(run, name, clustered_vectors(len(uris), DIM, seed=seed), uris, None, thumbs)
    return uris


def assert_locations_match_parts(out: Path) -> None:
    """Every id map row names the part and row that hold its image_id."""
    store = IndexDir.locate(str(out))
    meta = store.read_meta()
    idmap = store.read_idmap(meta, ["image_id", "part", "row"]).to_pylist()
    parts = {p.name: pq.read_table(p, columns=["image_id"]) for p in (out / "parts").iterdir()}
    for entry in idmap:
        held = parts[entry["part"]].column("image_id")[entry["row"]].as_py()
        assert held == entry["image_id"]


def test_id_map_records_part_and_row_of_every_vector(tmp_path):
    out = tmp_path / "out"
    run = make_run(out, 300, dim=DIM, part_rows=300)
    meta = build_index(run.path, progress=False)
    assert meta["locations"] is True  # filters, columns and thumbnails read only the hits
    store = IndexDir.locate(run.path)
    assert store.read_idmap(meta, IDMAP_COLUMNS + ["part", "row"]).num_rows == 300
    assert_locations_match_parts(out)

    # parts that store thumbnails arrive: added in place, rows counted past duplicates
    thumbs_part(run, "part-00001.parquet", 50, seed=3, reuse=["synthetic/0/00000007.jpg"])
    meta = build_index(run.path, progress=False)
    assert meta["last_action"]["action"] == "added" and meta["count"] == 350
    assert_locations_match_parts(out)
    thumbs_part(run, "part-00002.parquet", 40, seed=4, reuse=["thumbs/3/5.jpg"])
    meta = build_index(run.path, progress=False)
    assert meta["last_action"]["action"] == "added" and meta["count"] == 390
    assert_locations_match_parts(out)


def test_rows_are_located_across_read_batches(tmp_path, monkeypatch):
    import vlpipe.index.build as build

    monkeypatch.setattr(build, "BATCH_ROWS", 7)
    out = tmp_path / "out"
    run = RunDir(str(out))
    thumbs_part(run, "part-00000.parquet", 30, seed=1)
    thumbs_part(run, "part-00001.parquet", 20, seed=2, reuse=["thumbs/1/3.jpg", "thumbs/1/29.jpg"])
    write_manifest(run, DIM, 52)
    assert build_index(run.path, progress=False)["count"] == 50
    assert_locations_match_parts(out)


# ---- captions-only runs (--embedder none) ----


def write_captions_only_run(out: Path, say_so: bool = True) -> RunDir:
    """A run as `--embedder none` writes it: a null embedding column and (when `say_so`) a
    manifest naming no embedder."""
    uris = [f"photos/{i}.jpg" for i in range(4)]
    captions = [f"a caption of {u}" for u in uris]
    embedder = NO_EMBEDDER if say_so else None
    return make_run(out, np.zeros((4, DIM)), uris=uris, captions=captions, dtype=None,
                    embedder=embedder)  # fmt: skip


@pytest.mark.parametrize("say_so", [True, False])
def test_building_an_index_of_a_captions_only_run_is_refused(tmp_path, say_so):
    run = write_captions_only_run(tmp_path / "out", say_so)
    with pytest.raises(VlpipeError, match="captions-only run .*no embeddings to index") as err:
        build_index(run.path, progress=False)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "out" / "index").exists()


@pytest.mark.parametrize(
    "args",
    [
        ["index", "{out}"],
        ["index", "{out}", "--rebuild", "--kind", "flat"],
        ["search", "a dog", "--index", "{out}"],
        ["search", "a dog", "--index", "{out}", "--json"],
        ["serve", "--index", "{out}"],
    ],
)
def test_cli_on_a_captions_only_run_fails_with_one_line(tmp_path, args):
    from click.testing import CliRunner

    from vlpipe.cli import main

    out = str(write_captions_only_run(tmp_path / "out").path)
    result = CliRunner().invoke(main, [a.format(out=out) for a in args])
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1
    assert f"{out} is a captions-only run (--embedder none): it has no embeddings to" in lines[0]
