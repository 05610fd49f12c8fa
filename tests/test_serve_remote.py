"""Thumbnails of images that are not plain local files: tar members, objects on an S3 server,
and the thumbnails a `--save-thumbnails` run stored in its parts (served after the source went).

The runs here are synthetic vectors over real JPEG bytes: a thumbnail request needs no model.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import fsspec
import numpy as np
import pytest
from PIL import Image

from bench.synthetic import clustered_vectors
from tests.helpers.runs import make_run, write_manifest, write_part
from tests.helpers.s3_server import s3_server  # noqa: F401 - session fixture
from vlpipe.index.build import build_index
from vlpipe.rundir import RunDir
from vlpipe.schema import image_id
from vlpipe.search.searcher import Searcher

pytest.importorskip("starlette", reason="needs the 'serve' extra: pip install 'vlpipe[serve]'")
pytest.importorskip("multipart", reason="needs the 'serve' extra: pip install 'vlpipe[serve]'")

from starlette.testclient import TestClient  # noqa: E402

from vlpipe.reading.sources import ThumbnailError, read_source, split_tar_uri  # noqa: E402
from vlpipe.serve.app import Limits, SearchService, create_app  # noqa: E402
from vlpipe.serve.thumbnails import ThumbnailCache  # noqa: E402

DIM = 16
THUMB = 64


def jpeg(seed: int, size: tuple[int, int] = (120, 90)) -> bytes:
    """A small JPEG whose colour depends on `seed`."""
    color = tuple(int(c) for c in np.random.default_rng(seed).integers(0, 255, 3))
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "JPEG")
    return buf.getvalue()


def write_tar(fileobj, members: dict[str, bytes], gz: bool = False) -> None:
    with tarfile.open(fileobj=fileobj, mode="w:gz" if gz else "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def index_uris(out: Path, uris: list[str], thumbnails: list | None = None) -> Searcher:
    """A run of `uris` (synthetic vectors) in one part, indexed, opened."""
    make_run(out, clustered_vectors(len(uris), DIM), uris=uris, thumbnails=thumbnails, index=True)
    return Searcher.open(str(out))


def client_of(searcher: Searcher, cache: Path) -> TestClient:
    app = create_app(searcher, ThumbnailCache(cache, size=THUMB))
    return TestClient(app, raise_server_exceptions=False)


def get_jpeg(client: TestClient, uri: str) -> Image.Image:
    """The served thumbnail of an indexed uri, checked to be a whole JPEG."""
    r = client.get(f"/thumb/{image_id(uri)}")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/jpeg"
    image = Image.open(io.BytesIO(r.content))
    assert image.format == "JPEG"
    image.load()
    return image


# ---- tar members and plain local files ---------------------------------------------------------


@pytest.fixture(scope="module")
def local_tars(tmp_path_factory) -> tuple[Searcher, dict[str, str]]:
    root = tmp_path_factory.mktemp("tars")
    members = {f"{i:06d}.jpg": jpeg(i) for i in range(5)}
    members["x/y.jpg"] = jpeg(9, (200, 100))
    shards = root / "shards"
    shards.mkdir()
    with open(shards / "00001.tar", "wb") as f:
        write_tar(f, members)
    with open(shards / "00002.tar.gz", "wb") as f:
        write_tar(f, {"a/b.jpg": jpeg(11)}, gz=True)
    (shards / "00003.tar").write_bytes(b"not a tar at all" * 100)
    (root / "photo#1.jpg").write_bytes(jpeg(12))  # a '#' in a plain file's name
    uris = {
        "first": f"{shards}/00001.tar#000000.jpg",
        "nested": f"{shards}/00001.tar#x/y.jpg",
        "gz": f"{shards}/00002.tar.gz#a/b.jpg",
        "no member": f"{shards}/00001.tar#nope.jpg",
        "bad tar": f"{shards}/00003.tar#000000.jpg",
        "gone tar": f"{shards}/00009.tar#000000.jpg",
        "hash file": str(root / "photo#1.jpg"),
    }
    return index_uris(root / "out", list(uris.values())), uris


@pytest.mark.parametrize("key", ["first", "nested", "gz", "hash file"])
def test_thumbnail_of_a_tar_member_or_file(local_tars, tmp_path, key):
    searcher, uris = local_tars
    with client_of(searcher, tmp_path / "thumbs") as client:
        image = get_jpeg(client, uris[key])
    assert max(image.size) == THUMB
    if key == "nested":  # the member asked for, not its neighbour: 2:1 like its source
        assert image.size == (THUMB, THUMB // 2)


@pytest.mark.parametrize("key", ["no member", "bad tar", "gone tar"])
def test_missing_member_or_unreadable_tar_is_a_json_404(local_tars, tmp_path, key):
    searcher, uris = local_tars
    with client_of(searcher, tmp_path / "thumbs") as client:
        r = client.get(f"/thumb/{image_id(uris[key])}")
    assert r.status_code == 404
    assert r.json()["error"] and "Traceback" not in r.text


def test_tar_uris_split_on_the_last_hash_of_a_tar_only():
    assert split_tar_uri("s3://b/shards/00001.tar#x/y.jpg") == (
        "s3://b/shards/00001.tar",
        "x/y.jpg",
    )
    assert split_tar_uri("/d/a#b.tar#c.jpg") == ("/d/a#b.tar", "c.jpg")
    assert split_tar_uri("/d/s.TGZ#c.jpg") == ("/d/s.TGZ", "c.jpg")
    assert split_tar_uri("/d/photo#1.jpg") is None
    assert split_tar_uri("/d/s.tar#") is None
    assert split_tar_uri("/d/s.tar") is None


def test_reads_are_capped_for_files_tar_members_and_urls():
    fs = fsspec.filesystem("memory")
    big = b"\xff\xd8" + b"\0" * 3000
    fs.pipe("/cap/big.jpg", big)
    with fs.open("/cap/s.tar", "wb") as f:
        write_tar(f, {"big.jpg": big, "ok.jpg": b"\xff\xd8ok"})
    assert read_source("memory://cap/big.jpg", 4000) == big
    assert read_source("memory://cap/s.tar#ok.jpg", 1000) == b"\xff\xd8ok"
    for uri in ("memory://cap/big.jpg", "memory://cap/s.tar#big.jpg"):
        with pytest.raises(ThumbnailError, match="over") as caught:
            read_source(uri, 1000)
        assert not caught.value.missing  # too big is a 422, not a 404
    with pytest.raises(ThumbnailError) as caught:
        read_source("memory://cap/s.tar#missing.jpg", 1000)
    assert caught.value.missing


# ---- objects on an S3 server -------------------------------------------------------------------


def test_thumbnails_of_s3_objects_and_s3_tar_members(tmp_path, s3_server):  # noqa: F811
    fs = s3_server.fs()
    fs.mkdir("thumbs-src")
    fs.pipe("thumbs-src/photos/cat.jpg", jpeg(1))
    with fs.open("thumbs-src/shards/00001.tar", "wb") as f:
        write_tar(f, {"000000.jpg": jpeg(2), "x/y.jpg": jpeg(3, (90, 180))})
    uris = [
        "s3://thumbs-src/photos/cat.jpg",
        "s3://thumbs-src/shards/00001.tar#x/y.jpg",
        "s3://thumbs-src/photos/gone.jpg",
    ]
    searcher = index_uris(tmp_path / "out", uris)
    with client_of(searcher, tmp_path / "thumbs") as client:
        assert max(get_jpeg(client, uris[0]).size) == THUMB
        assert get_jpeg(client, uris[1]).size == (THUMB // 2, THUMB)
        r = client.get(f"/thumb/{image_id(uris[2])}")
        assert r.status_code == 404 and r.json()["error"]


# ---- thumbnails stored in the run's parts ------------------------------------------------------


def test_stored_thumbnails_are_served_after_the_source_is_gone(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    uris, stored = [], []
    for i in range(40):
        path = images / f"{i:03d}.jpg"
        path.write_bytes(jpeg(i, (300, 200)))
        uris.append(str(path))
        stored.append(jpeg(100 + i, (48, 32)) if i != 7 else None)  # row 7 stored none
    run = RunDir(str(tmp_path / "out"))
    vectors = clustered_vectors(len(uris), DIM)
    # two parts, the second in row groups of 6 rows: the row is found through the footer
    write_part(run, "part-00000.parquet", vectors[:10], uris[:10], None, stored[:10])
    write_part(run, "part-00001.parquet", vectors[10:], uris[10:], None, stored[10:],
               row_group_size=6)  # fmt: skip
    write_manifest(run, DIM, len(uris))
    meta = build_index(run.path, progress=False)
    assert meta["locations"] is True
    for path in images.iterdir():
        path.unlink()

    with client_of(Searcher.open(run.path), tmp_path / "thumbs") as client:
        for i in (0, 9, 10, 23, 39):
            r = client.get(f"/thumb/{image_id(uris[i])}")
            assert r.status_code == 200 and r.content == stored[i], i
            assert Image.open(io.BytesIO(r.content)).size == (48, 32)
        # no stored thumbnail and no source: 404 as before
        assert client.get(f"/thumb/{image_id(uris[7])}").status_code == 404

    # searching by an indexed image whose source is gone queries with its stored thumbnail
    service = SearchService(Searcher.open(run.path), ThumbnailCache(tmp_path / "t2"), Limits())
    service.by_image = lambda data, k, opts=None: data
    assert service.by_indexed_image(image_id(uris[23]), 3) == stored[23]


def test_a_row_without_a_stored_thumbnail_is_made_from_its_source(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    uris = []
    for i in range(3):
        (images / f"{i}.jpg").write_bytes(jpeg(i, (300, 200)))
        uris.append(str(images / f"{i}.jpg"))
    stored = [jpeg(50, (48, 32)), None, b"not a jpeg"]
    searcher = index_uris(tmp_path / "out", uris, stored)
    with client_of(searcher, tmp_path / "thumbs") as client:
        assert client.get(f"/thumb/{image_id(uris[0])}").content == stored[0]
        for uri in uris[1:]:
            assert get_jpeg(client, uri).size[0] == THUMB  # made here: the cache's size
