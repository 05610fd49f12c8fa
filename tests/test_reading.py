"""Planning and reading inputs (vlpipe.reading): directories, globs, pages and manifests, over
real files, real fsspec filesystems and real Parquet/CSV/JSONL.

Tar shards, brace ranges and read errors: test_reading_tars.py.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.helpers import hostile
from tests.helpers.reading import page_uris, png, write
from vlpipe.errors import VlpipeError
from vlpipe.reading.files import ReadError, read_bytes
from vlpipe.reading.plan import plan
from vlpipe.reading.records import spec_records
from vlpipe.reading.specs import KIND_MANIFEST, KIND_PAGE
from vlpipe.schema import image_id


def records(source, target: int = 16) -> list:
    return [r for spec in plan(str(source), target) for r in spec_records(spec)]


def uris(source, target: int = 16) -> list[str]:
    return [r.uri for r in records(source, target)]


def is_cut(uri: str, target: int) -> bool:
    return int.from_bytes(hashlib.sha1(uri.encode()).digest()[:8], "big") % target == 0


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
    write(root / "sub" / ".git" / "f.png")
    write(root / "notes.txt", b"not an image")
    write(root / "noext", b"x")
    return root


PHOTOS = ["B.PNG", "a.jpg", "sub/d.TIFF", "sub/deeper/c.webp", "with space é.gif"]


def test_directory_is_listed_recursively_without_hidden_files(photos):
    specs = list(plan(str(photos), 16))
    expected = [str(photos / e) for e in PHOTOS]
    assert [u for s in specs for u in s.uris] == expected
    for s in specs:
        assert s.kind == KIND_PAGE and s.count == len(s.uris)
        assert (s.first, s.last) == (s.uris[0], s.uris[-1])
    got = [r for s in specs for r in spec_records(s)]
    assert [r.uri for r in got] == expected
    for r in got:
        assert r.image_id == image_id(r.uri) and r.text is None
        assert r.data is None and r.failure is None  # pages carry names only; bytes come later
    assert read_bytes(got[0].uri) == (photos / "B.PNG").read_bytes()


def test_hidden_names_are_skipped_but_a_hidden_source_folder_is_not(photos, tmp_path):
    assert page_uris(photos / "**" / "*") == [str(photos / e) for e in PHOTOS]
    assert page_uris(photos / "**" / "*.jpg") == [str(photos / "a.jpg")]
    inside = write(tmp_path / ".data" / "in" / "x.jpg")
    assert page_uris(tmp_path / ".data" / "in") == [str(inside)]
    assert page_uris(tmp_path / ".data" / "*" / "*.jpg") == [str(inside)]


def test_relative_and_file_url_directories_give_absolute_uris(photos, monkeypatch):
    monkeypatch.chdir(photos.parent)
    got = page_uris("photos")
    assert got == [str(photos / e) for e in PHOTOS] and all(os.path.isabs(u) for u in got)
    assert page_uris("photos/sub/*.TIFF") == [str(photos / "sub/d.TIFF")]
    assert page_uris(f"file://{photos}") == got


def test_local_globs(photos):
    assert page_uris(photos / "*.jpg") == [str(photos / "a.jpg")]
    assert page_uris(photos / "**" / "*.webp") == [str(photos / "sub/deeper/c.webp")]
    sub = page_uris(photos / "s*")  # a matched folder is listed recursively
    assert sub == [str(photos / "sub/d.TIFF"), str(photos / "sub/deeper/c.webp")]


def test_single_image_file(photos):
    [spec] = plan(str(photos / "a.jpg"), 16)
    assert (spec.kind, spec.uris, spec.count) == (KIND_PAGE, (str(photos / "a.jpg"),), 1)


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
    got = uris(f"memory://{root}/x")
    assert got == [f"memory://{root}/x/{n}" for n in ("1.jpg", "2.png", "y/3.jpeg")]
    assert read_bytes(got[1]) == fs.cat(f"{root}/x/2.png")
    assert uris(f"memory://{root}/x/*.jpg") == [f"memory://{root}/x/1.jpg"]


# ---- pages ------------------------------------------------------------------------------------


def test_pages_are_sorted_cover_every_image_once_and_cut_by_name(tmp_path):
    names = [f"{d}/{i:03d}.jpg" for d in ("a", "a-b", "a.b", "b/c", "é") for i in range(30)]
    names += ["a.jpg", "A.png", "a0.gif", "z z.webp"]
    for name in names:
        write(tmp_path / "dir" / name, b"x")
    specs = list(plan(str(tmp_path / "dir"), 8))
    flat = [u for s in specs for u in s.uris]
    assert flat == sorted(str(tmp_path / "dir" / n) for n in names)
    assert len(set(flat)) == len(names) and len(specs) > 5
    for i, s in enumerate(specs):
        assert s.kind == KIND_PAGE and s.count == len(s.uris) <= 16
        assert (s.first, s.last) == (s.uris[0], s.uris[-1])
        assert not any(is_cut(u, 8) for u in s.uris[:-1])  # cut after the first cut name
        assert i == len(specs) - 1 or is_cut(s.last, 8) or s.count == 16
    assert len({s.key for s in specs}) == len(specs)


@pytest.mark.parametrize(
    "added", ["a/000.jpg", "m/150x.jpg", "m/299x.jpg", "zz.png", "m/077.5.jpg"]
)
def test_pages_are_content_defined(added):
    fs = fsspec.filesystem("memory")  # a fixed root: the page cuts are the same every run
    root = "/vlpipe-test-pages"
    for i in range(300):
        fs.pipe(f"{root}/m/{i:03d}.jpg", b"x")
    try:
        before = list(plan(f"memory://{root}", 16))
        fs.pipe(f"{root}/{added}", b"x")
        after = list(plan(f"memory://{root}", 16))
    finally:
        fs.rm(root, recursive=True)
    assert len(before) > 10 and sum(s.count for s in after) == 301
    new = [s for s in after if s.digest not in {b.digest for b in before}]
    gone = [b for b in before if b.digest not in {s.digest for s in after}]
    assert 1 <= len(new) <= 2 and 1 <= len(gone) <= 2
    assert f"memory://{root}/{added}" in {u for s in new for u in s.uris}


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
    ("img/one.jpg", "duplicate, kept for the worker to drop"),
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
    specs = list(plan(str(manifest), 16))
    assert [(s.kind, s.url) for s in specs] == [(KIND_MANIFEST, str(manifest))]
    assert specs[0].count == (6 if fmt == "parquet" else None)
    got = records(manifest)
    one, two, three = (str(images / "img" / n) for n in ("one.jpg", "two.png", "three.png"))
    assert [(r.uri, r.text, r.failure and r.failure[0]) for r in got] == [
        (one, "a dog on grass", None),
        ("", None, "missing-uri"),
        (two, None, None),
        (one, "duplicate, kept for the worker to drop", None),  # duplicates are not dropped here
        ("", None, "missing-uri"),
        (three, None, None),
    ]
    assert [r.image_id for r in got if r.failure] == [
        image_id(f"{manifest}#row={i}") for i in (1, 4)
    ]
    assert all(uri_col in r.failure[1] and "\n" not in r.failure[1] for r in got if r.failure)
    assert all(r.image_id == image_id(r.uri) and r.data is None for r in got if not r.failure)
    assert read_bytes(got[0].uri) == (images / "img/one.jpg").read_bytes()


def test_uri_column_preference_and_non_string_values(tmp_path):
    table = pa.table({"path": ["p.jpg"], "uri": ["u.jpg"], "text": [42]})
    pq.write_table(table, tmp_path / "m.parquet")
    got = records(tmp_path / "m.parquet")
    assert [(r.uri, r.text) for r in got] == [(str(tmp_path / "u.jpg"), "42")]


def test_manifest_on_memory_fs_resolves_relative_uris(memfs):
    fs, root = memfs
    fs.pipe(f"{root}/lists/m.csv", b"url,alt\n../x/1.jpg,one\nmemory:///elsewhere/z.png,\n")
    got = records(f"memory://{root}/lists/m.csv")
    assert [(r.uri, r.text) for r in got] == [
        (f"memory://{root}/x/1.jpg", "one"),
        ("memory:///elsewhere/z.png", None),
    ]
    assert read_bytes(got[0].uri) == fs.cat(f"{root}/x/1.jpg")


def test_hostile_manifest(tmp_path):
    corpus = tmp_path / "corpus"
    for name in ("photo with spaces.jpg", "café 写真 ñ.png", "image.bmp"):
        write(corpus / name)
    path, expected = hostile.make_hostile_manifest(tmp_path, corpus)
    got = records(path)
    listed = [r.uri for r in got if r.failure is None]
    unique = list(dict.fromkeys(listed))
    assert len(unique) == expected["records"]
    assert len(listed) - len(unique) == expected["duplicates"]
    failed = [r.failure[0] for r in got if r.failure]
    assert failed == ["missing-uri"] * expected["input_failures"]
    reasons = {}
    for uri in unique:
        try:
            read_bytes(uri)
        except ReadError as exc:
            reasons[uri] = exc.reason
            assert str(exc) and "\n" not in str(exc)
    assert reasons == expected["read_failures"]
    first_text = {}
    for r in got:
        first_text.setdefault(r.uri, r.text)
    assert {u: first_text[u] for u in expected["texts"]} == expected["texts"]


def test_parquet_row_groups_tile_into_row_range_specs(tmp_path):
    rows = [{"uri": f"img/{i:04d}.jpg", "caption": f"caption {i}"} for i in range(1000)]
    path = tmp_path / "m.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=100)
    assert pq.ParquetFile(path).metadata.num_row_groups == 10
    want = [(str(tmp_path / r["uri"]), r["caption"]) for r in rows]
    for target, n_specs in ((16, 70), (100, 10), (1, 150)):  # at most 16 specs per row group
        specs = list(plan(str(path), target))
        assert len(specs) == n_specs and len({s.key for s in specs}) == n_specs
        covered = []
        for s in specs:
            assert (s.kind, s.url) == (KIND_MANIFEST, str(path))
            assert 0 <= s.start < s.stop <= 100 and s.count == s.stop - s.start
            covered += [s.row_group * 100 + i for i in range(s.start, s.stop)]
        assert covered == list(range(1000))
        assert [(r.uri, r.text) for s in specs for r in spec_records(s)] == want


def test_glob_of_manifests_plans_all_of_them(tmp_path):
    lists = tmp_path / "lists"
    lists.mkdir()
    for name, n in (("a.parquet", 3), ("b.parquet", 2), (".c.parquet", 1)):
        table = pa.table({"uri": [f"{name}-{i}.jpg" for i in range(n)]})
        pq.write_table(table, lists / name)
    (lists / "d.csv").write_text("uri\nd.jpg\n")
    specs = list(plan(str(lists / "*.parquet"), 16))
    assert [s.url for s in specs] == [str(lists / "a.parquet"), str(lists / "b.parquet")]
    names = ["a.parquet-0", "a.parquet-1", "a.parquet-2", "b.parquet-0", "b.parquet-1"]
    assert [r.uri for s in specs for r in spec_records(s)] == [
        str(lists / f"{n}.jpg") for n in names
    ]


# ---- user errors: one line each, at planning --------------------------------------------------


def user_error(source) -> str:
    with pytest.raises(VlpipeError) as info:
        list(plan(str(source), 16))
    message = str(info.value)
    assert message and "\n" not in message
    return message


def test_user_errors(tmp_path):
    assert "input not found" in user_error(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    assert "no images found under" in user_error(tmp_path / "empty")
    write(tmp_path / "only-hidden" / ".x.jpg")
    write(tmp_path / "only-hidden" / "y.txt", b"text")
    assert "no images found under" in user_error(tmp_path / "only-hidden")
    assert "no images found matching" in user_error(tmp_path / "*.jpg")
    (tmp_path / "header-only.csv").write_text("uri,text\n")
    assert "no images found in manifest" in user_error(tmp_path / "header-only.csv")
    (tmp_path / "list.txt").write_text("a.jpg\n")
    assert "unsupported input" in user_error(tmp_path / "list.txt")
    (tmp_path / "sheet.xlsx").write_bytes(b"PK\x03\x04")
    assert "unsupported input" in user_error(tmp_path / "sheet.xlsx")
    (tmp_path / "bad.jsonl").write_text('{"uri": "a.jpg"}\nnot json\n')
    assert "cannot read manifest" in user_error(tmp_path / "bad.jsonl")
    assert "nosuchprotocol" in user_error("nosuchprotocol://bucket/photos/")


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_manifest_without_uri_column(tmp_path, fmt):
    path = tmp_path / f"cols.{fmt}"
    write_manifest(path, fmt, "name", "caption", tmp_path)
    message = user_error(path)
    assert "no uri column" in message and "name, caption" in message
    (tmp_path / "lists").mkdir()
    path.rename(tmp_path / "lists" / path.name)
    assert "no uri column" in user_error(tmp_path / "lists" / f"*.{fmt}")


def test_manifest_column_without_strings_fails_in_the_worker(tmp_path):
    pq.write_table(pa.table({"uri": [[1, 2]]}), tmp_path / "lists.parquet")
    [record] = records(tmp_path / "lists.parquet")
    assert record.uri == str(tmp_path / "lists.parquet") and record.data is None
    assert record.failure[0] == "bad-manifest" and "does not hold strings" in record.failure[1]


def test_manifest_broken_mid_read_ends_with_a_failure_record(tmp_path):
    path = tmp_path / "late.jsonl"
    path.write_text('{"uri": "a.jpg"}\n' * 300_000 + "not json\n")
    got = records(path)
    assert 0 < len(got) - 1 < 300_000 and {r.uri for r in got[:-1]} == {str(tmp_path / "a.jpg")}
    assert got[-1].uri == str(path) and got[-1].failure[0] == "bad-manifest"
    assert "JSON parse error" in got[-1].failure[1] and "\n" not in got[-1].failure[1]
