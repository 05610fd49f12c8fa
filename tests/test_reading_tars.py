"""WebDataset tar shards through vlpipe.reading (one spec per tar at planning, whose records a
worker streams out of the tar in one sequential read), the brace ranges that name shards, and the
ReadErrors of reading an input's bytes."""

from __future__ import annotations

import builtins
import contextlib
import dataclasses
import io
import json
import os
import tarfile
from collections import Counter
from pathlib import Path
from unittest import mock

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fsspec.implementations.local import LocalFileSystem

from tests.helpers.reading import page_uris, png, write
from vlpipe.errors import VlpipeError
from vlpipe.reading.braces import expand_braces
from vlpipe.reading.files import ReadError, read_bytes
from vlpipe.reading.plan import plan
from vlpipe.reading.records import spec_records
from vlpipe.reading.specs import KIND_MANIFEST, KIND_PAGE, KIND_TAR
from vlpipe.schema import image_id


def make_tar(path: Path, members: dict[str, bytes], mode: str = "w") -> Path:
    with tarfile.open(path, mode) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


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


SAMPLES = [
    ("k0.jpg", "text of shard {i}"),
    ("k1.png", "from json"),
    ("k2.webp", "alt text"),
    ("k3.jpeg", None),
    ("k4.JPG", None),
]


def tar_records(source) -> list:
    specs = list(plan(str(source), 16))
    assert {s.kind for s in specs} == {KIND_TAR}
    return [r for s in specs for r in spec_records(s)]


def test_tar_shard_groups_members_by_key(tmp_path):
    members = shard_members(0)
    tar = make_tar(tmp_path / "shard.tar", members)
    [spec] = plan(str(tar), 16)
    assert (spec.kind, spec.url, spec.first, spec.last) == (KIND_TAR, str(tar), str(tar), str(tar))
    got = list(spec_records(spec))
    assert [(r.uri, r.text) for r in got] == [
        (f"{tar}#s0/{name}", text and text.format(i=0)) for name, text in SAMPLES
    ]
    for r in got:
        assert r.image_id == image_id(r.uri) and r.failure is None
        assert r.data == members[r.uri.split("#", 1)[1]]


@pytest.mark.parametrize("name, mode", [("shard.tar.gz", "w:gz"), ("shard.tgz", "w:gz")])
def test_compressed_tar_streams_like_a_tar(tmp_path, name, mode):
    members = shard_members(1)
    plain = tar_records(make_tar(tmp_path / "shard.tar", members))
    packed = tar_records(make_tar(tmp_path / name, members, mode))
    assert [(r.uri.split("#")[1], r.text, r.data) for r in packed] == [
        (r.uri.split("#")[1], r.text, r.data) for r in plain
    ]
    assert len(packed) == 5 and all(r.uri.startswith(f"{tmp_path / name}#") for r in packed)


# ---- the driver never reads an image or a tar; a worker reads its tar once --------------------


class CountingFS(LocalFileSystem):
    protocol = "vlpipe-counting"
    opened: Counter = Counter()
    bytes_read: Counter = Counter()

    def _open(self, path, mode="rb", **kw):
        f = super()._open(path, mode, **kw)
        key = self._strip_protocol(path)
        CountingFS.opened[key] += 1
        read, readinto = f.read, f.readinto

        def counted(*args):
            data = read(*args)
            CountingFS.bytes_read[key] += len(data)
            return data

        def counted_into(buffer):
            n = readinto(buffer)
            CountingFS.bytes_read[key] += n or 0
            return n

        f.read, f.readinto = counted, counted_into
        return f


@pytest.fixture
def counting():
    fsspec.register_implementation(CountingFS.protocol, CountingFS, clobber=True)
    CountingFS.opened.clear()
    CountingFS.bytes_read.clear()
    return f"{CountingFS.protocol}://"


@contextlib.contextmanager
def opens_under(root: Path):
    """Every file under `root` opened directly (builtins.open, os.open, tarfile), not via fsspec."""
    opened: list[str] = []

    def watch(real):
        def watched(file, *args, **kwargs):
            if str(file).startswith(str(root)):
                opened.append(str(file))
            return real(file, *args, **kwargs)

        return watched

    with (
        mock.patch("builtins.open", watch(builtins.open)),
        mock.patch("os.open", watch(os.open)),
        mock.patch("tarfile.bltn_open", watch(tarfile.bltn_open)),
    ):
        yield opened


def test_planning_reads_no_tar_or_image_bytes(tmp_path, counting):
    (tmp_path / "tars").mkdir()
    for i in range(3):
        make_tar(tmp_path / "tars" / f"shard-{i:05d}.tar", shard_members(i))
    for i in range(40):
        write(tmp_path / "imgs" / f"{i:02d}.png", png(i))
    with opens_under(tmp_path) as opened:
        globbed = list(plan(f"{counting}{tmp_path}/tars/shard-*.tar", 16))
        braced = list(plan(f"{counting}{tmp_path}/tars/shard-{{00000..00002}}.tar", 16))
        pages = list(plan(f"{counting}{tmp_path}/imgs", 16))
    names = [f"shard-{i:05d}.tar" for i in range(3)]
    assert [os.path.basename(s.url) for s in globbed] == names
    assert [os.path.basename(s.url) for s in braced] == names
    assert {s.kind for s in globbed + braced} == {KIND_TAR}
    assert {s.kind for s in pages} == {KIND_PAGE} and sum(s.count for s in pages) == 40
    assert CountingFS.opened == Counter() and CountingFS.bytes_read == Counter()
    assert opened == []
    with opens_under(tmp_path) as opened:  # the guard itself sees a worker's direct opens
        list(spec_records(globbed[0]))
    assert opened == [str(tmp_path / "tars" / names[0])]


def test_a_worker_reads_its_tar_once(tmp_path, counting):
    big = {}
    for i in range(5):
        big[f"k{i}.jpg"] = os.urandom(500_000)
        big[f"k{i}.txt"] = f"caption {i}".encode()
    tar = make_tar(tmp_path / "big.tar", big)
    [spec] = plan(f"{counting}{tar}", 16)
    spec = dataclasses.replace(spec, url=f"{counting}{tar}")  # a worker on the counting fs
    got = list(spec_records(spec))
    assert [(r.text, r.data) for r in got] == [(f"caption {i}", big[f"k{i}.jpg"]) for i in range(5)]
    size = tar.stat().st_size
    assert CountingFS.opened == Counter({str(tar): 1})
    assert 2_500_000 <= CountingFS.bytes_read[str(tar)] <= 1.05 * size


def test_planning_reads_a_parquet_footer_and_a_worker_its_row_group(tmp_path, counting):
    rows = {
        "uri": [f"{i}.jpg" for i in range(20_000)],
        "blob": [os.urandom(50) for _ in range(20_000)],
    }
    path = tmp_path / "m.parquet"
    pq.write_table(pa.table(rows), path, row_group_size=10_000, compression="none")
    specs = list(plan(f"{counting}{path}", 10_000))
    assert [(s.kind, s.row_group, s.count) for s in specs] == [(KIND_MANIFEST, 0, 10_000)] + [
        (KIND_MANIFEST, 1, 10_000)
    ]
    size = path.stat().st_size
    assert 0 < CountingFS.bytes_read[str(path)] < 0.05 * size
    CountingFS.bytes_read.clear()
    worker = dataclasses.replace(specs[1], url=f"{counting}{path}")
    records = list(spec_records(worker))
    got = [r.uri for r in records]
    assert got[0].endswith("/10000.jpg") and len(got) == 10_000
    assert records[0].extra == {"blob": rows["blob"][10_000]}  # other columns travel along
    assert 0 < CountingFS.bytes_read[str(path)] < 0.6 * size  # its own row group, not the other


# ---- many shards, broken shards ---------------------------------------------------------------


def test_brace_range_of_tar_shards(tmp_path):
    for i in range(3):
        make_tar(tmp_path / f"shard-{i:05d}.tar", shard_members(i))
    specs = list(plan(str(tmp_path / "shard-{00000..00002}.tar"), 16))
    assert [s.url for s in specs] == [str(tmp_path / f"shard-{i:05d}.tar") for i in range(3)]
    got = [r for s in specs for r in spec_records(s)]
    assert [(r.uri, r.text) for r in got] == [
        (f"{tmp_path}/shard-{i:05d}.tar#s{i}/{name}", text and text.format(i=i))
        for i in range(3)
        for name, text in SAMPLES
    ]
    assert list(plan(str(tmp_path / "shard-*.tar"), 16)) == specs
    with pytest.raises(VlpipeError, match="shard-00003.tar"):
        list(plan(str(tmp_path / "shard-{00000..00003}.tar"), 16))


def test_corrupt_shard_among_many_becomes_a_failure_record(tmp_path):
    make_tar(tmp_path / "a.tar", shard_members(0))
    (tmp_path / "b.tar").write_bytes(b"this is not a tar archive" * 40)
    got = tar_records(tmp_path / "*.tar")
    assert [r.failure is None for r in got] == [True] * 5 + [False]
    bad = got[-1]
    assert bad.uri == str(tmp_path / "b.tar") and bad.image_id == image_id(bad.uri)
    assert bad.failure[0] == "bad-tar" and "cannot read tar shard" in bad.failure[1]
    # alone, it is no longer a planning error: the worker that opens it fails it
    [only] = tar_records(tmp_path / "b.tar")
    assert (only.uri, only.failure[0], only.data) == (str(tmp_path / "b.tar"), "bad-tar", None)


def test_truncated_tar_fails_the_member_it_cuts_and_reports_the_shard(tmp_path):
    members = shard_members(0)
    path = make_tar(tmp_path / "t.tar", members)
    with tarfile.open(path) as tar:
        cut = tar.getmember("s0/k4.JPG")
    path.write_bytes(path.read_bytes()[: cut.offset_data + cut.size // 2])
    got = tar_records(path)
    outcomes = {r.uri: r.data == members.get(r.uri.split("#")[-1]) for r in got[:4]}
    assert outcomes == {f"{path}#s0/{name}": True for name, _ in SAMPLES[:4]}
    assert got[4].uri == f"{path}#s0/k4.JPG" and got[4].failure is None
    assert isinstance(got[4].data, ReadError) and got[4].data.reason == "truncated"
    # what lay after the cut is unknown: the shard itself gets a failure record, never silence
    assert len(got) == 6 and got[5].uri == str(path) and got[5].failure[0] == "bad-tar"
    assert "after 4 images" in got[5].failure[1]


def test_member_over_the_size_limit_is_a_read_error(tmp_path):
    path = tmp_path / "sparse.tar"  # a 513 MiB member, sparse on disk
    with path.open("wb") as f:
        for name, data, declared in (
            ("a.jpg", png(1), 0),
            ("b.jpg", b"", 513 << 20),
            ("c.jpg", png(2), 0),
        ):
            info = tarfile.TarInfo(name)
            info.size = declared or len(data)
            f.write(info.tobuf(format=tarfile.GNU_FORMAT))
            if declared:
                f.seek(declared, 1)
            else:
                f.write(data + b"\0" * (-len(data) % 512))
        f.write(b"\0" * 1024)
    got = tar_records(path)
    assert [(r.uri.split("#")[1], r.failure) for r in got] == [
        (n, None) for n in ("a.jpg", "b.jpg", "c.jpg")
    ]
    assert got[0].data == png(1) and got[2].data == png(2)
    assert isinstance(got[1].data, ReadError) and got[1].data.reason == "too-large"


def test_tar_without_images_yields_no_records(tmp_path):
    assert tar_records(make_tar(tmp_path / "no-images.tar", {"a.txt": b"hello"})) == []


# ---- brace ranges -----------------------------------------------------------------------------


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
        list(plan(str(tmp_path / pattern), 16))


def test_literal_braces_in_an_existing_name(tmp_path):
    path = write(tmp_path / "odd {name}.jpg")
    assert page_uris(path) == [str(path)]


# ---- read errors ------------------------------------------------------------------------------


def read_reason(uri: str, **kw) -> str:
    with pytest.raises(ReadError) as info:
        read_bytes(uri, **kw)
    assert str(info.value) and "\n" not in str(info.value)
    return info.value.reason


def test_read_errors(tmp_path):
    path = write(tmp_path / "a.png", png(1, (64, 64)))
    assert read_reason(str(tmp_path / "missing.jpg")) == "missing"
    assert read_reason(str(tmp_path)) == "not-a-file"
    assert read_reason("nosuchprotocol://bucket/x.jpg") == "bad-uri"
    assert read_reason("memory:///vlpipe-test-nothing/x.jpg") == "missing"
    assert read_reason(str(path), max_bytes=10) == "too-large"
    assert read_bytes(str(path), max_bytes=10_000) == path.read_bytes()


@pytest.mark.skipif(os.geteuid() == 0, reason="running as root: root can read a chmod-000 file")
def test_unreadable_file_is_a_read_error(tmp_path):
    path = write(tmp_path / "locked.jpg")
    path.chmod(0)
    try:
        assert read_reason(str(path)) == "permission-denied"
    finally:
        path.chmod(0o644)


# ---- a tar that ends early loses no sample it holds, and never ends in silence ----------------


def cut_tar(tmp_path: Path, where) -> tuple[Path, list]:
    members = {"k0.jpg": png(1), "k0.txt": b"zero", "k1.jpg": png(2), "k1.txt": b"one"}
    path = make_tar(tmp_path / "t.tar", members)
    with tarfile.open(path) as tar:
        at = where({m.name: m for m in tar.getmembers()})
    path.write_bytes(path.read_bytes()[:at])
    return path, tar_records(path)


def test_tar_cut_inside_a_header_gets_a_failure_record(tmp_path):
    path, got = cut_tar(tmp_path, lambda m: m["k1.jpg"].offset + 100)
    assert [r.uri for r in got] == [f"{path}#k0.jpg", str(path)]
    assert got[-1].failure[0] == "bad-tar"


def test_tar_cut_inside_a_text_member_keeps_the_image_before_it(tmp_path):
    path, got = cut_tar(tmp_path, lambda m: m["k0.txt"].offset_data + 2)
    assert [r.uri for r in got] == [f"{path}#k0.jpg", str(path)]
    assert got[0].data == png(1) and got[-1].failure[0] == "bad-tar"
