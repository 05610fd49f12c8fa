"""What a run does and keeps: embeddings-only and captions-only runs, the source's own columns
carried through with their types, filters before the model, WebDataset output and thumbnails."""

from __future__ import annotations

import datetime as dt
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from tests.helpers.images import image_bytes
from tests.helpers.reliability import (
    assert_exactly_once,
    config,
    mixed_names,
    read_output,
    tiny,  # noqa: F401 - session fixture
    write_images,
)
from vlpipe.api import run_and_index as run
from vlpipe.errors import VlpipeError


def manifest_of(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def test_embeddings_only_runs_no_captioner_and_builds_the_index(tiny, tmp_path):  # noqa: F811
    src, out = tmp_path / "src", tmp_path / "out"
    uris = [str(p) for p in write_images(src, mixed_names(7))]
    summary = run(config(tiny, src, out, captioner="none", build_index=True))
    assert summary.ok and summary.written == 7 and summary.index["count"] == 7
    rows, _ = assert_exactly_once(str(out), uris)
    assert all(r["caption"] is None and len(r["embedding"]) == 32 for r in rows)
    m = manifest_of(out)
    assert m["mode"] == {"captions": False, "embeddings": True}
    assert m["models"]["captioner"] == {"name": "none", "config": None}


def test_captions_only_writes_no_embedding_and_no_index(tiny, tmp_path):  # noqa: F811
    src, out = tmp_path / "src", tmp_path / "out"
    uris = [str(p) for p in write_images(src, mixed_names(6))]
    summary = run(config(tiny, src, out, embedder="none", build_index=True))
    assert summary.ok and summary.written == 6 and summary.index is None
    rows, _ = assert_exactly_once(str(out), uris)
    assert all(r["caption"] and r["embedding"] is None and r["text_score"] is None for r in rows)
    part = next((out / "parts").glob("*.parquet"))
    assert pa.types.is_null(pq.read_schema(part).field("embedding").type)
    assert not (out / "index").exists()
    assert manifest_of(out)["mode"] == {"captions": True, "embeddings": False}
    # one output, one mode: a full run into it is refused unless --overwrite
    with pytest.raises(VlpipeError, match="different model config"):
        run(config(tiny, src, out))
    assert run(config(tiny, src, out, overwrite=True)).ok
    assert manifest_of(out)["mode"] == {"captions": True, "embeddings": True}


def test_both_none_is_refused(tiny, tmp_path):  # noqa: F811
    with pytest.raises(VlpipeError, match="nothing to do"):
        run(config(tiny, tmp_path, tmp_path / "out", captioner="none", embedder="none"))


def _photos(folder: Path, n: int) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"p{i}.jpg"
        path.write_bytes(image_bytes((60 + i, 40 + i), "JPEG", i))
        paths.append(str(path))
    return paths


def test_parquet_manifest_columns_keep_their_types(tiny, tmp_path):  # noqa: F811
    uris = _photos(tmp_path / "img", 5)
    when = [dt.datetime(2024, 1, i + 1, 12, tzinfo=dt.timezone.utc) for i in range(5)]
    table = pa.table(
        {
            "url": uris,
            "alt": [f"alt {i}" for i in range(5)],
            "license": ["cc-by", "cc0", None, "cc-by", "cc-by-sa"],
            "score": pa.array([0.5, 1.5, 2.5, 3.5, 4.5], pa.float32()),
            "views": pa.array([1, 2, 3, 4, 5], pa.int16()),
            "tags": [["a"], ["b", "c"], [], None, ["d"]],
            "crawled": pa.array(when, pa.timestamp("ms", tz="UTC")),
        }
    )
    pq.write_table(table, tmp_path / "m.parquet")
    out = tmp_path / "out"
    assert run(config(tiny, tmp_path / "m.parquet", out)).ok
    parts = [pq.read_table(p) for p in (out / "parts").glob("*.parquet")]
    schema = parts[0].schema
    for name in ("license", "score", "views", "tags", "crawled"):
        assert schema.field(name).type == table.schema.field(name).type, name
    rows = {r["uri"]: r for t in parts for r in t.to_pylist()}
    for i, uri in enumerate(uris):
        assert rows[uri]["text"] == f"alt {i}" and rows[uri]["views"] == i + 1
        assert rows[uri]["tags"] == table.column("tags")[i].as_py()
        assert (
            rows[uri]["crawled"] == when[i] and rows[uri]["license"] == table["license"][i].as_py()
        )
    # --columns keeps some; a named column the manifest lacks, or a clash, is one line
    kept = tmp_path / "kept"
    assert run(config(tiny, tmp_path / "m.parquet", kept, columns=("license",))).ok
    names = pq.read_schema(next((kept / "parts").glob("*.parquet"))).names
    assert "license" in names and "views" not in names and "tags" not in names
    with pytest.raises(VlpipeError, match="--columns names 'nope'"):
        run(config(tiny, tmp_path / "m.parquet", tmp_path / "x", columns=("nope",)))
    pq.write_table(table.append_column("width", pa.array([1] * 5)), tmp_path / "clash.parquet")
    with pytest.raises(VlpipeError, match="'width', a name vlpipe's output uses"):
        run(config(tiny, tmp_path / "clash.parquet", tmp_path / "y"))
    clash = config(tiny, tmp_path / "clash.parquet", tmp_path / "z", columns=("license",))
    assert run(clash).ok  # left out with --columns


def test_csv_manifest_columns_and_source_facts(tiny, tmp_path):  # noqa: F811
    uris = _photos(tmp_path / "img", 4)
    lines = ["uri,page_title,aesthetic,year"]
    lines += [f"{u},page {i},{i / 4},{2000 + i}" for i, u in enumerate(uris)]
    (tmp_path / "m.csv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    assert run(config(tiny, tmp_path / "m.csv", out)).ok
    rows, _ = read_output(str(out))
    by_uri = {r["uri"]: r for r in rows}
    for i, uri in enumerate(uris):
        row = by_uri[uri]
        assert (row["page_title"], row["aesthetic"], row["year"]) == (f"page {i}", i / 4, 2000 + i)
        assert (row["orig_width"], row["orig_height"]) == (60 + i, 40 + i)
        assert row["format"] == "JPEG" and row["bytes"] == Path(uri).stat().st_size


def test_exif_rotated_photo_records_stored_and_displayed_size(tiny, tmp_path):  # noqa: F811
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90: stored 80x50, displayed 50x80
    buf = io.BytesIO()
    Image.new("RGB", (80, 50), (10, 120, 200)).save(buf, "JPEG", exif=exif.tobytes())
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "r.jpg").write_bytes(buf.getvalue())
    assert run(config(tiny, tmp_path / "src", tmp_path / "out")).ok
    [row], _ = read_output(str(tmp_path / "out"))
    assert (row["width"], row["height"], row["orig_width"], row["orig_height"]) == (50, 80, 80, 50)


def _sample_tar(path: Path) -> None:
    with tarfile.open(path, "w") as tar:
        for i in range(3):
            meta = {
                "caption": f"alt {i}",
                "width": 999,
                "license": "cc-by",
                "exif": {"iso": 100 + i},
            }
            members = {
                f"{i:04d}.jpg": image_bytes((50, 40), "JPEG", i),
                f"{i:04d}.json": json.dumps(meta).encode(),
                f"{i:04d}.cls": str(i * 7).encode(),
            }
            for name, data in members.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def test_tar_sample_members_become_columns(tiny, tmp_path):  # noqa: F811
    _sample_tar(tmp_path / "s.tar")
    assert run(config(tiny, tmp_path / "s.tar", tmp_path / "out")).ok
    rows, _ = read_output(str(tmp_path / "out"))
    by_name = {r["uri"].rsplit("#", 1)[1]: r for r in rows}
    for i in range(3):
        row = by_name[f"{i:04d}.jpg"]
        assert row["text"] == f"alt {i}" and row["cls"] == i * 7 and row["license"] == "cc-by"
        assert row["exif.iso"] == 100 + i  # a nested object, flattened one level
        assert row["json.width"] == 999 and row["width"] == 50  # vlpipe's own name wins


def test_filters_skip_before_the_model_and_retry_keeps_them_skipped(tiny, tmp_path):  # noqa: F811
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    sizes = {"tiny.png": (20, 20), "wide.png": (300, 40), "ok.png": (90, 70), "big.png": (200, 150)}
    for name, size in sizes.items():
        (src / name).write_bytes(image_bytes(size, "PNG", len(name)))
    (src / "broken.png").write_bytes(b"\x89PNG broken")
    filters = dict(min_size=32, max_aspect=4.0, max_pixels=20_000)
    summary = run(config(tiny, src, out, **filters))
    assert summary.ok and summary.written == 1
    assert summary.reasons == {
        "filter:too-small": 1, "filter:aspect": 1, "filter:too-many-pixels": 1,
        "decode:corrupt": 1,
    }  # fmt: skip
    _, failed = assert_exactly_once(str(out), [str(p) for p in src.iterdir()])
    reasons = {Path(f["uri"]).name: (f["stage"], f["reason"]) for f in failed}
    assert reasons["wide.png"] == ("filter", "aspect") and "4" in str(failed)
    # --retry-failed with the same filters retries the broken file only
    (src / "broken.png").write_bytes(image_bytes((50, 50), "PNG", 99))
    again = run(config(tiny, src, out, retry_failed=True, **filters))
    assert again.ok and again.processed == 1 and again.written == 2 and again.failed == 3
    assert_exactly_once(str(out), [str(p) for p in src.iterdir()])
    # ...and with other filters, the filtered ones get another look
    wider = run(config(tiny, src, out, retry_failed=True, min_size=32, max_pixels=20_000))
    assert wider.ok and wider.processed == 3 and wider.written == 3 and wider.failed == 2
    _, failed = assert_exactly_once(str(out), [str(p) for p in src.iterdir()])
    assert sorted(f["reason"] for f in failed) == ["too-many-pixels", "too-small"]


def test_webdataset_output_reads_back_with_webdataset(tiny, tmp_path):  # noqa: F811
    webdataset = pytest.importorskip("webdataset", reason="needs webdataset (vlpipe[test])")
    src, out = tmp_path / "src", tmp_path / "out"
    uris = _photos(src, 9)
    summary = run(config(tiny, src, out, output_format="webdataset", thumbnail_px=24))
    assert summary.ok and summary.written == 9
    rows, _ = read_output(str(out))
    by_id = {r["image_id"]: r for r in rows}
    tars = sorted((out / "wds").glob("*.tar"))
    parts = sorted((out / "parts").glob("*.parquet"))
    assert [t.stem for t in tars] == [p.stem for p in parts]  # a tar beside each part
    seen = 0
    for sample in webdataset.WebDataset([str(t) for t in tars], shardshuffle=False):
        row = by_id[sample["__key__"]]
        assert sample["jpg"] == Path(row["uri"]).read_bytes()  # the image as read
        assert sample["txt"].decode() == row["caption"]
        assert json.loads(sample["json"])["uri"] == row["uri"]
        emb = np.load(io.BytesIO(sample["npy"]))
        assert np.allclose(emb, row["embedding"], atol=1e-3)
        seen += 1
    assert seen == 9 == len(uris)
    for row in rows:  # thumbnails: JPEGs at most 24 px on the longer side
        thumb = Image.open(io.BytesIO(row["thumbnail"]))
        assert thumb.format == "JPEG" and max(thumb.size) <= 24


def test_serve_shows_stored_thumbnails_of_a_real_run_after_the_source_is_gone(tiny, tmp_path):  # noqa: F811
    pytest.importorskip("starlette", reason="needs the 'serve' extra")
    from starlette.testclient import TestClient

    from vlpipe.search.searcher import Searcher
    from vlpipe.serve.app import create_app
    from vlpipe.serve.thumbnails import ThumbnailCache

    _sample_tar(tmp_path / "s.tar")
    out = tmp_path / "out"
    assert run(config(tiny, tmp_path / "s.tar", out, thumbnail_px=32, build_index=True)).ok
    rows, _ = read_output(str(out))
    (tmp_path / "s.tar").unlink()  # the source is gone: only the stored thumbnails remain
    app = create_app(Searcher.open(str(out)), ThumbnailCache(tmp_path / "cache", size=32))
    with TestClient(app, raise_server_exceptions=False) as client:
        for row in rows:
            got = client.get(f"/thumb/{row['image_id']}")
            assert got.status_code == 200 and got.content == row["thumbnail"]


def test_overwrite_removes_the_previous_runs_dedup(tiny, tmp_path):  # noqa: F811
    """A dedup of the replaced rows must not be read as this run's (summary, search --dedup)."""
    from vlpipe.api import duplicates_line
    from vlpipe.dedup.output import read_summary
    from vlpipe.dedup.run import DedupOptions, dedup
    from vlpipe.rundir import RunDir

    src, out = tmp_path / "src", tmp_path / "out"
    uris = _photos(src, 3)
    (src / "copy.jpg").write_bytes(Path(uris[0]).read_bytes())
    assert run(config(tiny, src, out)).ok
    dedup(str(out), DedupOptions(method="phash"))
    assert read_summary(RunDir(str(out)))["duplicates"] == 1
    assert run(config(tiny, src, out, overwrite=True)).ok
    assert not (out / "dedup").exists() and read_summary(RunDir(str(out))) is None
    assert duplicates_line(str(out), 4) is None
