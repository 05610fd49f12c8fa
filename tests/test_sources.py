"""Input sources over real files, real fsspec filesystems, real Parquet/CSV/JSONL and real tars."""

from __future__ import annotations

import csv
import io
import json
import os
import tarfile
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fsspec.implementations.local import LocalFileSystem
from PIL import Image

from tests import hostile
from vlpipe.errors import VlpipeError
from vlpipe.pipeline.sources import (
    InputRecord,
    ReadError,
    expand_braces,
    list_inputs,
    read_bytes,
    read_tar_members,
)
from vlpipe.schema import image_id


def png(seed: int = 0, size=(8, 6)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (seed * 40 % 256, 100, 30)).save(buf, "PNG")
    return buf.getvalue()


def write(path: Path, data: bytes = b"") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data or png())
    return path


def uris(listing) -> list[str]:
    return [r.uri for r in listing.records]


def make_tar(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


# ---- directories and globs --------------------------------------------------------------------


@pytest.fixture
def photos(tmp_path) -> Path:
    root = tmp_path / "photos"
    write(root / "a.jpg")
    write(root / "B.PNG")
    write(root / "sub" / "deeper" / "c.webp")
    write(root / "sub" / "d.TIFF")
    write(root / "with space é.gif")
    write(root / ".hidden.jpg")
    write(root / ".cache" / "e.jpg")
    write(root / "notes.txt", b"not an image")
    write(root / "noext", b"x")
    return root


def test_directory_is_listed_recursively_without_hidden_files(photos):
    listing = list_inputs(str(photos))
    expected = ["B.PNG", "a.jpg", "sub/d.TIFF", "sub/deeper/c.webp", "with space é.gif"]
    assert uris(listing) == sorted(str(photos / e) for e in expected)
    assert all(os.path.isabs(u) for u in uris(listing))
    assert all(r.image_id == image_id(r.uri) and r.text is None for r in listing.records)
    assert listing.failures == [] and listing.duplicates == 0
    assert read_bytes(listing.records[0]) == (photos / "B.PNG").read_bytes()


def test_relative_directory_gives_absolute_uris(photos, monkeypatch):
    monkeypatch.chdir(photos.parent)
    assert uris(list_inputs("photos")) == uris(list_inputs(str(photos)))


def test_file_url_directory(photos):
    assert uris(list_inputs(f"file://{photos}")) == uris(list_inputs(str(photos)))


def test_local_globs(photos):
    assert uris(list_inputs(str(photos / "*.jpg"))) == [str(photos / "a.jpg")]
    deep = list_inputs(str(photos / "**" / "*.webp"))
    assert uris(deep) == [str(photos / "sub/deeper/c.webp")]
    sub = list_inputs(str(photos / "s*"))  # a matched folder is listed recursively
    assert uris(sub) == [str(photos / "sub/d.TIFF"), str(photos / "sub/deeper/c.webp")]


def test_single_image_file(photos):
    assert uris(list_inputs(str(photos / "a.jpg"))) == [str(photos / "a.jpg")]


@pytest.fixture
def memfs():
    fs = fsspec.filesystem("memory")
    root = "/vlpipe-test-src"
    for name in ("x/1.jpg", "x/2.png", "x/y/3.jpeg", "x/.hidden.png", "x/readme.md"):
        fs.pipe(f"{root}/{name}", png(len(name)))
    yield fs, root
    fs.rm(root, recursive=True)


def test_memory_fsspec_directory_and_glob(memfs):
    fs, root = memfs
    listing = list_inputs(f"memory://{root}/x")
    assert uris(listing) == [f"memory://{root}/x/{n}" for n in ("1.jpg", "2.png", "y/3.jpeg")]
    assert read_bytes(listing.records[1]) == fs.cat(f"{root}/x/2.png")
    globbed = list_inputs(f"memory://{root}/x/*.jpg")
    assert uris(globbed) == [f"memory://{root}/x/1.jpg"]


# ---- manifests --------------------------------------------------------------------------------


@pytest.fixture
def images(tmp_path) -> Path:
    root = tmp_path / "data"
    for name in ("img/one.jpg", "img/two.png", "img/three.png"):
        write(root / name, png(len(name)))
    return root


MANIFEST_ROWS = [
    ("img/one.jpg", "a dog on grass"),  # relative: resolves against the manifest's folder
    (None, "row without uri"),
    ("img/two.png", None),  # null text
    ("img/one.jpg", "duplicate, dropped"),
    ("", "empty uri"),
    ("ABS:img/three.png", "  "),  # absolute path; blank text counts as none
]


def write_manifest(path: Path, fmt: str, uri_col: str, text_col: str, root: Path) -> Path:
    rows = [
        {uri_col: str(root / u[4:]) if u and u.startswith("ABS:") else u, text_col: t}
        for u, t in MANIFEST_ROWS
    ]
    if fmt == "csv":
        with path.open("w", newline="") as f:
            w = csv.DictWriter(f, [uri_col, text_col])
            w.writeheader()
            w.writerows({k: "" if v is None else v for k, v in r.items()} for r in rows)
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif fmt == "json":
        path.write_text(json.dumps(rows))
    else:
        pq.write_table(pa.Table.from_pylist(rows), path)
    return path


@pytest.mark.parametrize(
    "fmt, uri_col, text_col",
    [
        ("csv", "uri", "text"),
        ("jsonl", "url", "caption"),
        ("parquet", "path", "alt"),
        ("json", "Image", "TEXT"),  # a JSON array; column names match case-insensitively
        ("parquet", "URL", "Caption"),
    ],
)
def test_manifest(images, fmt, uri_col, text_col):
    manifest = write_manifest(images / f"inputs.{fmt}", fmt, uri_col, text_col, images)
    listing = list_inputs(str(manifest))
    assert [(r.uri, r.text) for r in listing.records] == [
        (str(images / "img/one.jpg"), "a dog on grass"),
        (str(images / "img/three.png"), None),
        (str(images / "img/two.png"), None),
    ]
    assert listing.duplicates == 1
    assert [(f["image_id"], f["uri"], f["stage"], f["reason"]) for f in listing.failures] == [
        (image_id(f"{manifest}#row={i}"), "", "input", "missing-uri") for i in (1, 4)
    ]
    assert all(uri_col in f["error"] for f in listing.failures)
    assert read_bytes(listing.records[0]) == (images / "img/one.jpg").read_bytes()


def test_uri_column_preference_and_non_string_values(tmp_path):
    table = pa.table({"path": ["p.jpg"], "uri": ["u.jpg"], "text": [42]})
    pq.write_table(table, tmp_path / "m.parquet")
    listing = list_inputs(str(tmp_path / "m.parquet"))
    assert [(r.uri, r.text) for r in listing.records] == [(str(tmp_path / "u.jpg"), "42")]


def test_manifest_on_memory_fs_resolves_relative_uris(memfs):
    fs, root = memfs
    fs.pipe(f"{root}/lists/m.csv", b"url,alt\n../x/1.jpg,one\nmemory:///elsewhere/z.png,\n")
    listing = list_inputs(f"memory://{root}/lists/m.csv")
    assert [(r.uri, r.text) for r in listing.records] == [
        ("memory:///elsewhere/z.png", None),
        (f"memory://{root}/x/1.jpg", "one"),
    ]
    assert read_bytes(listing.records[1]) == fs.cat(f"{root}/x/1.jpg")


def test_hostile_manifest(tmp_path):
    corpus = tmp_path / "corpus"
    for name in ("photo with spaces.jpg", "café 写真 ñ.png", "image.bmp"):
        write(corpus / name)
    path, expected = hostile.make_hostile_manifest(tmp_path, corpus)
    listing = list_inputs(str(path))
    assert len(listing.records) == expected["records"]
    assert len(listing.failures) == expected["input_failures"]
    assert listing.duplicates == expected["duplicates"]
    reasons = {}
    for record in listing.records:
        try:
            read_bytes(record)
        except ReadError as exc:
            reasons[record.uri] = exc.reason
            assert str(exc) and "\n" not in str(exc)
    assert reasons == expected["read_failures"]
    texts = {r.uri: r.text for r in listing.records if r.uri in expected["texts"]}
    assert texts == expected["texts"]


# ---- tar shards -------------------------------------------------------------------------------


def shard_members(i: int) -> dict[str, bytes]:
    return {
        f"s{i}/k0.jpg": png(1),
        f"s{i}/k0.txt": f"text of shard {i}\n".encode(),
        f"s{i}/k1.png": png(2),
        f"s{i}/k1.json": json.dumps({"caption": "from json", "alt": "ignored"}).encode(),
        f"s{i}/k2.webp": png(3),
        f"s{i}/k2.json": json.dumps({"alt": "alt text"}).encode(),
        f"s{i}/k3.jpeg": png(4),  # no text
        f"s{i}/k3.cls": b"7",
        f"s{i}/k4.json": b"{not json",
        f"s{i}/k4.JPG": png(5),
        f"s{i}/._k5.jpg": b"macOS resource fork",  # hidden: skipped
    }


def test_tar_shard_groups_members_by_key(tmp_path):
    members = shard_members(0)
    tar = make_tar(tmp_path / "shard.tar", members)
    listing = list_inputs(str(tar))
    got = [(r.member, r.text) for r in listing.records]
    assert got == [
        ("s0/k0.jpg", "text of shard 0"),
        ("s0/k1.png", "from json"),
        ("s0/k2.webp", "alt text"),
        ("s0/k3.jpeg", None),
        ("s0/k4.JPG", None),
    ]
    for r in listing.records:
        assert r.uri == f"{tar}#{r.member}" and r.tar == str(tar)
        assert r.image_id == image_id(r.uri)
        assert read_bytes(r) == members[r.member]
    got = read_tar_members(str(tar), ["s0/k3.jpeg", "s0/k1.png", "nope.jpg"])
    assert got["s0/k3.jpeg"] == members["s0/k3.jpeg"] and got["s0/k1.png"] == members["s0/k1.png"]
    assert isinstance(got["nope.jpg"], ReadError) and got["nope.jpg"].reason == "missing-member"


def test_tar_listing_reads_headers_not_image_bytes(tmp_path):
    """Listing seeks past image data: bytes read stay far below the shard's size."""

    class CountingFS(LocalFileSystem):
        protocol = "vlpipe-counting"
        bytes_read = 0

        def _open(self, path, mode="rb", **kw):
            f = super()._open(path, mode, **kw)
            read = f.read

            def counted(*args):
                data = read(*args)
                CountingFS.bytes_read += len(data)
                return data

            f.read = counted
            return f

    big = {f"k{i}.jpg": os.urandom(2_000_000) for i in range(4)}
    big.update({f"k{i}.txt": b"caption" for i in range(4)})
    tar = make_tar(tmp_path / "big.tar", big)
    fsspec.register_implementation(CountingFS.protocol, CountingFS, clobber=True)
    listing = list_inputs(f"{CountingFS.protocol}://{tar}")
    assert len(listing.records) == 4 and all(r.text == "caption" for r in listing.records)
    assert CountingFS.bytes_read < 100_000 < tar.stat().st_size


def test_brace_range_of_tar_shards(tmp_path):
    for i in range(3):
        make_tar(tmp_path / f"shard-{i:05d}.tar", shard_members(i))
    listing = list_inputs(str(tmp_path / "shard-{00000..00002}.tar"))
    assert len(listing.records) == 15
    assert {r.tar for r in listing.records} == {
        str(tmp_path / f"shard-{i:05d}.tar") for i in range(3)
    }
    assert uris(listing) == sorted(uris(listing))
    assert uris(list_inputs(str(tmp_path / "shard-*.tar"))) == uris(listing)
    with pytest.raises(VlpipeError, match="shard-00003.tar"):
        list_inputs(str(tmp_path / "shard-{00000..00003}.tar"))


def test_corrupt_shard_among_many_becomes_a_failure_row(tmp_path):
    make_tar(tmp_path / "a.tar", shard_members(0))
    (tmp_path / "b.tar").write_bytes(b"this is not a tar archive" * 40)
    listing = list_inputs(str(tmp_path / "*.tar"))
    assert len(listing.records) == 5
    [failure] = listing.failures
    assert failure["uri"] == str(tmp_path / "b.tar") and failure["reason"] == "bad-tar"
    assert failure["stage"] == "input" and failure["image_id"] == image_id(failure["uri"])
    with pytest.raises(VlpipeError, match="cannot read tar shard"):
        list_inputs(str(tmp_path / "b.tar"))


def test_truncated_tar_fails_the_member_it_cuts_and_reports_the_shard(tmp_path):
    members = shard_members(0)
    path = make_tar(tmp_path / "t.tar", members)
    with tarfile.open(path) as tar:
        cut = tar.getmember("s0/k4.JPG")
    path.write_bytes(path.read_bytes()[: cut.offset_data + cut.size // 2])
    listing = list_inputs(str(path))
    outcomes = {}
    for r in listing.records:
        try:
            outcomes[r.member] = read_bytes(r) == members[r.member]
        except ReadError as exc:
            outcomes[r.member] = exc.reason
    assert outcomes == {
        "s0/k0.jpg": True,
        "s0/k1.png": True,
        "s0/k2.webp": True,
        "s0/k3.jpeg": True,
        "s0/k4.JPG": "unreadable",
    }
    # what lay after the cut is unknown: the shard itself gets a failure row, never silence
    [failure] = listing.failures
    assert failure["uri"] == str(path) and failure["reason"] == "bad-tar"
    assert "after 5 images" in failure["error"]


@pytest.mark.parametrize(
    "pattern, names",
    [
        ("s/{00000..00002}.tar", ["s/00000.tar", "s/00001.tar", "s/00002.tar"]),
        ("{8..11}", ["8", "9", "10", "11"]),
        ("{08..10}", ["08", "09", "10"]),
        ("{2..0}", ["2", "1", "0"]),
        ("{a,b}-{0..1}", ["a-0", "a-1", "b-0", "b-1"]),
        ("{a,{b,c}}", ["a", "b", "c"]),
        ("plain.tar", ["plain.tar"]),
    ],
)
def test_expand_braces(pattern, names):
    assert expand_braces(pattern) == names


@pytest.mark.parametrize(
    "pattern", ["s/{0..}.tar", "s/{a..b}.tar", "s/{}.tar", "s/{0..3.tar", "s/0..3}.tar"]
)
def test_malformed_brace_range(tmp_path, pattern):
    with pytest.raises(VlpipeError, match="malformed brace range"):
        list_inputs(str(tmp_path / pattern))


def test_literal_braces_in_an_existing_name(tmp_path):
    path = write(tmp_path / "odd {name}.jpg")
    assert uris(list_inputs(str(path))) == [str(path)]


# ---- read errors ------------------------------------------------------------------------------


def record(uri: str) -> InputRecord:
    return InputRecord(uri, image_id(uri))


def read_reason(uri: str, **kw) -> str:
    with pytest.raises(ReadError) as info:
        read_bytes(record(uri), **kw)
    assert str(info.value) and "\n" not in str(info.value)
    return info.value.reason


def test_read_errors(tmp_path):
    path = write(tmp_path / "a.png", png(1, (64, 64)))
    assert read_reason(str(tmp_path / "missing.jpg")) == "missing"
    assert read_reason(str(tmp_path)) == "not-a-file"
    assert read_reason("nosuchprotocol://bucket/x.jpg") == "bad-uri"
    assert read_reason("memory:///vlpipe-test-nothing/x.jpg") == "missing"
    assert read_reason(str(path), max_bytes=10) == "too-large"
    assert read_bytes(record(str(path)), max_bytes=10_000) == path.read_bytes()


@pytest.mark.skipif(os.geteuid() == 0, reason="running as root: root can read a chmod-000 file")
def test_unreadable_file_is_a_read_error(tmp_path):
    path = write(tmp_path / "locked.jpg")
    path.chmod(0)
    try:
        assert read_reason(str(path)) == "permission-denied"
    finally:
        path.chmod(0o644)


# ---- user errors: one line each ---------------------------------------------------------------


def user_error(source: str) -> str:
    with pytest.raises(VlpipeError) as info:
        list_inputs(source)
    message = str(info.value)
    assert message and "\n" not in message
    return message


def test_user_errors(tmp_path):
    assert "input not found" in user_error(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    assert "no images found under" in user_error(str(tmp_path / "empty"))
    write(tmp_path / "only-hidden" / ".x.jpg")
    write(tmp_path / "only-hidden" / "y.txt", b"text")
    assert "no images found under" in user_error(str(tmp_path / "only-hidden"))
    assert "no images found matching" in user_error(str(tmp_path / "*.jpg"))
    (tmp_path / "cols.csv").write_text("name,caption\nx.jpg,hi\n")
    message = user_error(str(tmp_path / "cols.csv"))
    assert "no uri column" in message and "name, caption" in message
    (tmp_path / "header-only.csv").write_text("uri,text\n")
    assert "no images found in manifest" in user_error(str(tmp_path / "header-only.csv"))
    (tmp_path / "list.txt").write_text("a.jpg\n")
    assert "unsupported input" in user_error(str(tmp_path / "list.txt"))
    (tmp_path / "sheet.xlsx").write_bytes(b"PK\x03\x04")
    assert "unsupported input" in user_error(str(tmp_path / "sheet.xlsx"))
    (tmp_path / "bad.jsonl").write_text('{"uri": "a.jpg"}\nnot json\n')
    assert "cannot read manifest" in user_error(str(tmp_path / "bad.jsonl"))
    pq.write_table(pa.table({"uri": [[1, 2]]}), tmp_path / "lists.parquet")
    assert "does not hold strings" in user_error(str(tmp_path / "lists.parquet"))
    make_tar(tmp_path / "no-images.tar", {"a.txt": b"hello"})
    assert "no images found in tar shard" in user_error(str(tmp_path / "no-images.tar"))
    assert "nosuchprotocol" in user_error("nosuchprotocol://bucket/photos/")
