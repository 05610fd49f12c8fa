"""The search web app's API over a real index of real photos embedded with a tiny real CLIP."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import pytest
from PIL import Image

from tests.helpers.runs import INDEXED_PHOTOS as N_PHOTOS
from tests.helpers.runs import make_indexed_run

pytest.importorskip("starlette", reason="needs the 'serve' extra: pip install 'vlpipe[serve]'")
pytest.importorskip("multipart", reason="needs the 'serve' extra: pip install 'vlpipe[serve]'")

from starlette.testclient import TestClient  # noqa: E402

from vlpipe.serve.app import Limits, create_app  # noqa: E402
from vlpipe.serve.thumbnails import ThumbnailCache  # noqa: E402


@pytest.fixture(scope="module")
def indexed(tmp_path_factory):
    return make_indexed_run(tmp_path_factory.mktemp("serve"))


@pytest.fixture(scope="module")
def searcher(indexed):
    from vlpipe.search.searcher import Searcher

    return Searcher.open(str(indexed[0]), device="cpu")


@pytest.fixture()
def client(searcher, tmp_path):
    limits = Limits(max_upload_bytes=200_000)
    app = create_app(searcher, ThumbnailCache(tmp_path / "thumbs", size=128), limits)
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def _photo_id(client, indexed) -> tuple[str, str]:
    """image_id and uri of an indexed photo, found through the API."""
    names = set(indexed[1])
    hits = client.get("/api/search", params={"q": "a dog", "k": 100}).json()["results"]
    hit = next(h for h in hits if Path(h["uri"]).name in names)
    return hit["image_id"], hit["uri"]


def test_page_is_self_contained(client):
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "<script>" in r.text and "<style>" in r.text
    assert "http://" not in r.text and "https://" not in r.text  # no CDN, works offline
    assert "default-src 'none'" in r.headers["content-security-policy"]
    assert r.headers["x-content-type-options"] == "nosniff"


def test_text_search_returns_ranked_hits(client, indexed, searcher):
    r = client.get("/api/search", params={"q": "a dog runs on the grass", "k": 5})
    assert r.status_code == 200
    body = r.json()
    hits = body["results"]
    assert body["query"] == "a dog runs on the grass" and len(hits) == 5
    assert [h["rank"] for h in hits] == list(range(1, 6))  # ranks are 1-based, as in the CLI
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    for h in hits:
        assert searcher.uri_of(h["image_id"]) == h["uri"]
        assert h["thumb"] == f"/thumb/{h['image_id']}"
    # k larger than the index gives every indexed image once
    everything = client.get("/api/search", params={"q": "dog", "k": 100}).json()["results"]
    assert len({h["image_id"] for h in everything}) == searcher.size == N_PHOTOS + 1


def test_search_by_indexed_image_finds_itself_first(client, indexed):
    image_id, _ = _photo_id(client, indexed)
    hits = client.get("/api/search", params={"image_id": image_id, "k": 3}).json()["results"]
    assert hits[0]["image_id"] == image_id and hits[0]["score"] == pytest.approx(1.0, abs=0.01)


def test_upload_search_finds_the_same_photo(client, indexed):
    # The photo itself: a random tiny model cannot be trusted to match a resized copy.
    image_id, uri = _photo_id(client, indexed)
    files = {"image": ("query.jpg", Path(uri).read_bytes(), "image/jpeg")}
    r = client.post("/api/search", params={"k": 3}, files=files)
    assert r.status_code == 200, r.text
    assert r.json()["results"][0]["image_id"] == image_id


def test_thumbnails_are_cached_jpegs_with_cache_headers(client, indexed, tmp_path):
    image_id, uri = _photo_id(client, indexed)
    r = client.get(f"/thumb/{image_id}")
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    assert "max-age" in r.headers["cache-control"] and r.headers["etag"]
    thumb = Image.open(io.BytesIO(r.content))
    original = Image.open(uri)
    assert thumb.format == "JPEG" and max(thumb.size) == 128
    assert thumb.size[0] / thumb.size[1] == pytest.approx(original.width / original.height, 0.05)
    cached = list((tmp_path / "thumbs").glob(f"{image_id}-*.jpg"))
    assert len(cached) == 1 and cached[0].read_bytes() == r.content
    again = client.get(f"/thumb/{image_id}", headers={"If-None-Match": r.headers["etag"]})
    assert again.status_code == 304 and again.content == b""


def test_thumbnail_of_undecodable_or_vanished_file(client, indexed, searcher, tmp_path):
    hits = client.get("/api/search", params={"q": "dog", "k": 100}).json()["results"]
    notes = next(h for h in hits if h["uri"].endswith("notes.jpg"))
    r = client.get(notes["thumb"])
    assert r.status_code == 422 and "decode" in r.json()["error"]
    # a copy of the index whose image file has gone: 404, JSON
    moved = tmp_path / "gone.jpg"
    image_id, uri = _photo_id(client, indexed)
    shutil.move(uri, moved)
    try:
        r = client.get(f"/thumb/{image_id}")
        assert r.status_code == 404 and r.json()["error"]
    finally:
        shutil.move(moved, uri)


@pytest.mark.parametrize(
    "params, status",
    [
        ({}, 400),
        ({"q": "   "}, 400),
        ({"q": "x" * 501}, 400),
        ({"q": "dog", "k": 0}, 400),
        ({"q": "dog", "k": 101}, 400),
        ({"q": "dog", "k": "ten"}, 400),
        ({"q": "dog", "k": -3}, 400),
        ({"image_id": "0123456789abcdef0123"}, 404),
        ({"image_id": "../../etc/passwd"}, 404),
    ],
)
def test_search_bounds(client, params, status):
    r = client.get("/api/search", params=params)
    assert r.status_code == status
    assert r.json()["error"] and "Traceback" not in r.text


@pytest.mark.parametrize(
    "path",
    [
        "/thumb/../../../../etc/passwd",
        "/thumb/..%2f..%2f..%2fetc%2fpasswd",
        "/thumb/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        "/thumb/%2e%2e",
        "/thumb/%2Fetc%2Fpasswd",
        "/thumb//etc/passwd",
        "/thumb/etc/passwd",
        "/thumb/C:%5Cwindows%5Cwin.ini",
        "/thumb/0123456789abcdef0123",  # well-formed id that is not in the index
        "/thumb/" + "a" * 300,
        "/static/../vlpipe/serve/app.py",
        "/..%2f..%2fetc%2fpasswd",
    ],
)
def test_traversal_attempts_get_json_404(client, path):
    r = client.get(path)
    assert r.status_code == 404
    assert r.headers["content-type"] == "application/json" and r.json()["error"]
    assert b"root:" not in r.content


def test_thumb_by_indexed_uri_instead_of_id_is_refused(client, indexed):
    _, uri = _photo_id(client, indexed)
    assert client.get("/thumb/" + uri.lstrip("/")).status_code == 404
    assert client.get("/thumb/" + uri.replace("/", "%2F")).status_code == 404


def test_oversized_upload_is_413(client):
    big = b"\xff\xd8" + b"\0" * 300_000
    r = client.post("/api/search", files={"image": ("big.jpg", big, "image/jpeg")})
    assert r.status_code == 413 and "limit" in r.json()["error"]


def test_oversized_upload_without_length_is_413(client):
    def chunks():
        for _ in range(40):
            yield b"\0" * 10_000

    r = client.post(
        "/api/search",
        content=chunks(),
        headers={"content-type": "multipart/form-data; boundary=x"},
    )
    assert r.status_code == 413


@pytest.mark.parametrize(
    "files, status",
    [
        ({"image": ("notes.jpg", b"<html>hello</html>", "image/jpeg")}, 422),
        ({"image": ("trunc.jpg", b"\xff\xd8\xff\xe0\0\x10JFIF", "image/jpeg")}, 422),
        ({"image": ("empty.jpg", b"", "image/jpeg")}, 400),
        ({"other": ("x.jpg", b"abc", "image/jpeg")}, 400),
    ],
)
def test_bad_uploads_are_json_errors(client, files, status):
    r = client.post("/api/search", files=files)
    assert r.status_code == status and r.json()["error"]


def test_upload_must_be_multipart(client):
    r = client.post("/api/search", content=b"abc", headers={"content-type": "image/jpeg"})
    assert r.status_code == 415 and r.json()["error"]


def test_unknown_routes_and_methods_are_json(client):
    assert client.get("/nope").status_code == 404
    r = client.delete("/api/search")
    assert r.status_code == 405 and r.json()["error"]


def test_foreign_host_header_is_refused_on_loopback(searcher, tmp_path):
    from vlpipe.serve.app import LOOPBACK_HOSTS

    app = create_app(searcher, ThumbnailCache(tmp_path), allowed_hosts=LOOPBACK_HOSTS)
    with TestClient(app, base_url="http://127.0.0.1:8000") as ok:
        assert ok.get("/api/search", params={"q": "dog", "k": 1}).status_code == 200
    with TestClient(app, base_url="http://evil.example:8000") as rebinding:
        r = rebinding.get("/api/search", params={"q": "dog", "k": 1})
        assert r.status_code == 400 and "Host" in r.json()["error"]


def test_serve_cli_refuses_a_missing_index(tmp_path):
    from click.testing import CliRunner

    from vlpipe.cli import main

    result = CliRunner().invoke(main, ["serve", "--index", str(tmp_path / "nothing")])
    assert result.exit_code == 1
    assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output


@pytest.fixture(scope="module")
def live_url(searcher, tmp_path_factory):
    """The app under a real uvicorn on a free loopback port (raw paths reach it unnormalised)."""
    import socket
    import threading

    import uvicorn

    app = create_app(searcher, ThumbnailCache(tmp_path_factory.mktemp("thumbs")))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            pytest.fail("uvicorn did not start")
        threading.Event().wait(0.05)
    yield sock.getsockname()
    server.should_exit = True
    thread.join(timeout=10)
    sock.close()


@pytest.mark.parametrize(
    "raw_path",
    [
        "/thumb/../../../../etc/passwd",
        "/thumb/..%2f..%2f..%2fetc%2fpasswd",
        "/thumb/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        "/thumb/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        "/thumb/%252e%252e%252fetc%252fpasswd",
        "/thumb/..\\..\\etc\\passwd",
        "/%2e%2e/%2e%2e/etc/passwd",
        "//etc/passwd",
    ],
)
def test_raw_traversal_paths_on_a_real_server(live_url, raw_path):
    import http.client
    import json

    conn = http.client.HTTPConnection(*live_url, timeout=10)
    conn.putrequest("GET", raw_path, skip_accept_encoding=True)  # sent as is, not normalised
    conn.endheaders()
    response = conn.getresponse()
    body = response.read()
    conn.close()
    assert response.status == 404
    assert json.loads(body)["error"] and b"root:" not in body


@pytest.fixture(scope="module")
def dedup_client(tmp_path_factory):
    """A client over a real run (mini models) of photos and copies of them, deduplicated."""
    from tests.helpers.runs import make_dedup_run
    from vlpipe.search.searcher import Searcher

    out, expected = make_dedup_run(tmp_path_factory.mktemp("serve-dedup"))
    app = create_app(Searcher.open(str(out)), ThumbnailCache(tmp_path_factory.mktemp("dt")))
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c, expected


def _names(cluster: dict) -> set[str]:
    return {Path(m["uri"]).name for m in cluster["members"]}


def test_duplicates_lists_the_clusters_biggest_first(dedup_client):
    client, expected = dedup_client
    body = client.get("/api/duplicates").json()
    clusters = body["clusters"]
    assert body["total"] == 3 and [c["size"] for c in clusters] == [3, 2, 2]
    assert _names(clusters[0]) == expected[0]
    assert sorted(map(sorted, map(_names, clusters))) == sorted(map(sorted, expected))
    for c in clusters:
        members = c["members"]
        assert len(members) == c["size"]
        assert [m["is_representative"] for m in members] == [True] + [False] * (c["size"] - 1)
        assert members[0]["image_id"] == c["cluster_id"]
        for m in members:
            assert m["method"] in ("sha256", "phash", "embedding") and 0 < m["similarity"] < 1.01
            assert m["caption"] and Path(m["uri"]).exists()
            thumb = client.get(m["thumb"])
            assert thumb.status_code == 200 and thumb.content[:2] == b"\xff\xd8"
    exact = next(m for m in clusters[0]["members"] if Path(m["uri"]).name.startswith("copy <b"))
    assert exact["method"] == "sha256" and exact["similarity"] == pytest.approx(1.0, abs=1e-3)


def test_duplicates_pages_and_bounds(dedup_client):
    client, _ = dedup_client
    everything = client.get("/api/duplicates").json()["clusters"]
    second = client.get("/api/duplicates", params={"offset": 1, "limit": 1}).json()
    assert second["total"] == 3 and second["clusters"] == everything[1:2]
    assert client.get("/api/duplicates", params={"offset": 5}).json()["clusters"] == []
    for params in ({"limit": 0}, {"limit": 101}, {"offset": -1}, {"limit": "ten"}):
        r = client.get("/api/duplicates", params=params)
        assert r.status_code == 400 and r.json()["error"]


def test_duplicates_without_dedup_output_is_a_json_404(client):
    r = client.get("/api/duplicates")
    assert r.status_code == 404 and r.headers["content-type"] == "application/json"
    assert r.json()["error"].startswith("no duplicates: run vlpipe dedup")


def test_search_collapses_duplicates_when_asked(dedup_client):
    from tests.helpers.runs import DEDUP_PHOTOS as N_PHOTOS

    client, expected = dedup_client
    params = {"q": "a dog", "k": 100}
    every = client.get("/api/search", params=params).json()["results"]
    assert len(every) == N_PHOTOS + 4 and all("duplicates" not in h for h in every)
    hits = client.get("/api/search", params={**params, "dedup": 1}).json()["results"]
    assert len(hits) == N_PHOTOS == len({h["image_id"] for h in hits})
    assert sorted(h["duplicates"] for h in hits if h["duplicates"]) == [1, 1, 2]
    assert [h["rank"] for h in hits] == list(range(1, N_PHOTOS + 1))
    assert all(len({Path(h["uri"]).name for h in hits} & names) == 1 for names in expected)
    # by an indexed copy: its cluster comes back once, as the representative
    copy = next(h for h in every if Path(h["uri"]).name == "copy-q15.jpg")
    by_image = {"image_id": copy["image_id"], "k": 3, "dedup": "1"}
    first = client.get("/api/search", params=by_image).json()["results"][0]
    biggest = client.get("/api/duplicates", params={"limit": 1}).json()["clusters"][0]
    assert first["image_id"] == biggest["cluster_id"] and first["duplicates"] == 2
