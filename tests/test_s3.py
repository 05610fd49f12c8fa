"""`s3://` inputs and outputs through fsspec/s3fs against a real S3 server on 127.0.0.1 (moto's
server mode), with `vlpipe run` in a subprocess: parts, failures, manifest and _SUCCESS land on
S3, a rerun resumes, a new object is picked up."""

from __future__ import annotations

import json

from tests.helpers.images import image_bytes
from tests.helpers.reliability import (
    assert_exactly_once,
    config,
    mixed_names,
    run_vlpipe,
    summary_counts,
    tiny,  # noqa: F401 - session fixture
    vlpipe_argv,
)
from tests.helpers.s3_server import s3_server  # noqa: F401 - session fixture
from vlpipe.api import run_and_index as run

BUCKET = "photos"


def upload(fs, names: list[str], seed: int = 0) -> list[str]:
    from tests.helpers.images import FORMATS

    by_ext = dict(FORMATS)
    uris = []
    for i, name in enumerate(names):
        data = image_bytes((50 + i * 3, 40 + i * 5), by_ext[name.rsplit(".", 1)[1]], seed + i)
        fs.pipe(f"{BUCKET}/imgs/{name}", data)
        uris.append(f"s3://{BUCKET}/imgs/{name}")
    return uris


def test_s3_in_and_out_resume_and_new_objects(tiny, s3_server):  # noqa: F811
    fs = s3_server.fs()
    fs.mkdir(BUCKET)
    uris = upload(fs, mixed_names(10))
    fs.pipe(f"{BUCKET}/imgs/not an image.jpg", b"<html>access denied</html>")
    uris.append(f"s3://{BUCKET}/imgs/not an image.jpg")
    out = f"s3://{BUCKET}/out/"
    argv = vlpipe_argv(tiny, f"s3://{BUCKET}/imgs/", out, "--shard-size", "4")

    first = run_vlpipe(argv)
    assert first.returncode == 0, first.stdout + first.stderr
    assert summary_counts(first.stdout) == {
        "seen": 11,
        "written": 10,
        "failed": 1,
        "ok": True,
        "processed": 11,
    }
    fs = s3_server.fs()
    assert len(fs.glob(f"{BUCKET}/out/parts/part-*.parquet")) == 3
    assert len(fs.glob(f"{BUCKET}/out/failed/part-*.parquet")) == 1
    assert fs.exists(f"{BUCKET}/out/_SUCCESS")
    assert json.loads(fs.cat(f"{BUCKET}/out/index/meta.json"))["count"] == 10
    manifest = json.loads(fs.cat(f"{BUCKET}/out/manifest.json"))
    assert manifest["source"] == f"s3://{BUCKET}/imgs/"
    assert manifest["counts"]["written"] == 10 and manifest["counts"]["failed"] == 1
    rows, failed = assert_exactly_once(out, uris)
    assert failed[0]["uri"] == f"s3://{BUCKET}/imgs/not an image.jpg"
    assert failed[0]["stage"] == "decode"

    # Rerun and a new object, in-process this time (same code, no interpreter start-up).
    again = run(config(tiny, f"s3://{BUCKET}/imgs/", out, shard_size=4))
    assert again.ok and again.processed == 0 and again.written == 10
    uris += upload(s3_server.fs(), ["added later.png"], seed=50)
    more = run(config(tiny, f"s3://{BUCKET}/imgs/", out, shard_size=4, build_index=True))
    assert more.ok and more.processed == 1 and (more.seen, more.written) == (12, 11)
    assert more.index["last_action"]["action"] == "added" and more.index["count"] == 11
    rows, _ = assert_exactly_once(out, uris)
    assert f"s3://{BUCKET}/imgs/added later.png" in {r["uri"] for r in rows}


def test_s3_listings_see_parts_written_by_other_processes(s3_server):  # noqa: F811
    """Workers on other processes or machines add parts while the launcher holds a RunDir whose
    s3fs caches listings; verification must see them (it once reported them LOST)."""
    import pyarrow as pa

    from vlpipe.rundir import RunDir, write_table_atomic

    fs = s3_server.fs()
    fs.mkdir("listing")
    table = pa.table({"image_id": ["a"]})
    write_table_atomic(fs, "listing/out/parts/part-1.parquet", table)
    launcher = RunDir("s3://listing/out")
    assert len(launcher.parts()) == 1
    other_process = s3_server.fs()  # its own connection and cache, like a worker's
    write_table_atomic(other_process, "listing/out/parts/part-2.parquet", table)
    assert len(launcher.parts()) == 2
    assert launcher.image_ids() == {"a"}


def test_s3_listing_is_paged_and_streamed(s3_server):  # noqa: F811
    """2,345 objects: more than one ListObjectsV2 page of 1,000 keys; every image lands in
    exactly one page spec, in key order, and a hidden object is skipped."""
    from vlpipe.reading.plan import plan

    fs = s3_server.fs()
    fs.mkdir("paged")
    names = [f"d{i % 3}/img-{i:05d}.jpg" for i in range(2345)]
    fs.pipe({f"paged/many/{n}": b"x" for n in names} | {"paged/many/.hidden.jpg": b"x"})
    specs = list(plan("s3://paged/many/", 100))
    uris = [u for s in specs for u in s.uris]
    assert uris == sorted(f"s3://paged/many/{n}" for n in names)
    assert sum(s.count for s in specs) == 2345 and len(specs) > 10
    assert all(s.first == s.uris[0] and s.last == s.uris[-1] for s in specs)
    globbed = list(plan("s3://paged/many/d1/*.jpg", 100))
    assert sum(s.count for s in globbed) == len([n for n in names if n.startswith("d1/")])


def test_s3_tar_shards_stream_into_parts(tiny, s3_server):  # noqa: F811
    """WebDataset tars on S3: each read once, sequentially, by a worker, a part every shard-size
    images; the rerun skips the done tars without opening them."""
    import io
    import tarfile

    fs = s3_server.fs()
    fs.mkdir("tars")
    uris = []
    for t in range(2):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for i in range(9):
                for name, data in (
                    (f"{t}{i:03d}.jpg", image_bytes((60, 40 + i), "JPEG", 10 * t + i)),
                    (f"{t}{i:03d}.txt", f"tar {t} sample {i}".encode()),
                ):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        fs.pipe(f"tars/shards/{t:05d}.tar", buf.getvalue())
        uris += [f"s3://tars/shards/{t:05d}.tar#{t}{i:03d}.jpg" for i in range(9)]
    out = "s3://tars/out"
    summary = run(config(tiny, "s3://tars/shards/{00000..00001}.tar", out, shard_size=4))
    assert summary.ok and (summary.seen, summary.written) == (18, 18)
    assert len(s3_server.fs().glob("tars/out/parts/part-*.parquet")) == 6  # 4 + 4 + 1 per tar
    rows, _ = assert_exactly_once(out, uris)
    assert {r["text"] for r in rows} == {f"tar {t} sample {i}" for t in range(2) for i in range(9)}
    again = run(config(tiny, "s3://tars/shards/*.tar", out, shard_size=4))
    assert again.ok and again.processed == 0 and again.written == 18
