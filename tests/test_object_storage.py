"""Object storage at real latency: the local S3 server behind a proxy that adds latency with
jitter, 503 SlowDown, dropped connections and slow bodies, and counts every request.

Writes go straight to their final keys (one PUT, no temp object, no rename, no listing asked
whether a temp object exists), the driver's polling costs O(workers) requests whatever the
number of specs, storage errors are one line naming operation, path and the storage's message,
permanent ones fail at planning, and runs under faults (repeated, and killed then resumed)
account for every image exactly once."""

from __future__ import annotations

import io
import json
import os
import signal
import tarfile
import time

import pytest

from bench.s3_proxy import Faults, proxied, request_kind
from tests.helpers.images import image_bytes
from tests.helpers.reliability import (
    assert_exactly_once,
    config,
    mixed_names,
    start_vlpipe,
    tiny,  # noqa: F401 - session fixture
    vlpipe_argv,
)
from tests.helpers.s3_server import s3_server  # noqa: F401 - session fixture
from vlpipe.api import run_and_index as run
from vlpipe.errors import VlpipeError
from vlpipe.rundir import RunDir, write_table_atomic

#: what a user sees from a real bucket: tens of milliseconds a request, a few failing
REAL_LATENCY = Faults(latency=(0.001, 0.03), seed=1)
FLAKY = Faults(latency=(0.001, 0.02), slowdown=0.03, drop=0.02, slow_body=0.03, seed=2)


def upload_tars(fs, bucket: str, n_tars: int, per_tar: int) -> list[str]:
    uris = []
    for t in range(n_tars):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for i in range(per_tar):
                for name, data in (
                    (f"{t}{i:03d}.jpg", image_bytes((48, 36 + i), "JPEG", 10 * t + i)),
                    (f"{t}{i:03d}.txt", f"tar {t} sample {i}".encode()),
                ):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        fs.pipe(f"{bucket}/shards/{t:05d}.tar", buf.getvalue())
        uris += [f"s3://{bucket}/shards/{t:05d}.tar#{t}{i:03d}.jpg" for i in range(per_tar)]
    return uris


def upload_loose(fs, bucket: str, n: int) -> list[str]:
    from tests.helpers.images import FORMATS

    by_ext = dict(FORMATS)
    uris = []
    for i, name in enumerate(mixed_names(n)):
        data = image_bytes((40 + i, 30 + i), by_ext[name.rsplit(".", 1)[1]], i)
        fs.pipe(f"{bucket}/loose/{name}", data)
        uris.append(f"s3://{bucket}/loose/{name}")
    return uris


def test_request_kinds():
    assert request_kind("GET", "/b?list-type=2&prefix=x%2F") == "LIST"
    assert request_kind("GET", "/b/k/x.json") == "GET"
    assert request_kind("HEAD", "/b/k") == "HEAD"


def test_a_write_is_one_put_to_its_final_key(s3_server):  # noqa: F811
    """No temp object, no rename (a copy and a delete on S3), no HEAD or listing in the write
    path: nothing a driver's listing cache could answer wrongly."""
    import pyarrow as pa

    s3_server.fs().mkdir("direct")
    with proxied(s3_server.endpoint) as proxy:
        run = RunDir("s3://direct/out")
        run.write_marker({"key": "k1", "done": True})
        write_table_atomic(run.fs, run.join("parts", "part-1.parquet"), pa.table({"a": [1]}))
        run.write_manifest({"status": "running"})
        assert dict(proxy.counts) == {"PUT": 3}, proxy.log
        assert not any(".tmp-" in path for _, path in proxy.log)
    fs = s3_server.fs()
    assert json.loads(fs.cat("direct/out/_done/k1.json")) == {"key": "k1", "done": True}
    assert fs.ls("direct/out/parts", detail=False) == ["direct/out/parts/part-1.parquet"]


def test_a_poll_costs_requests_per_worker_not_per_spec(s3_server):  # noqa: F811
    """1,200 done markers (more than one listing page) and two workers' progress objects: a
    poll reads the progress objects only: one read per worker (and a listing of `_progress/`
    the first time and every few polls, to find new workers)."""
    from vlpipe.pipeline.progress import ProgressMonitor, poll_interval

    fs = s3_server.fs()
    fs.mkdir("polls")
    fs.pipe({f"polls/out/_done/{i:020x}.json": b'{"done": true}' for i in range(1200)})
    run = RunDir("s3://polls/out")
    run.write_progress("w1", {"seen": 700})
    run.write_progress("w2", {"seen": 42})
    with proxied(s3_server.endpoint) as proxy:
        monitor = ProgressMonitor("s3://polls/out", total=None, enabled=False)
        assert monitor.seen() == 742
        assert proxy.total() == 3, proxy.log  # LIST _progress/ + GET w1 + GET w2
        proxy.reset()
        run.write_progress("w1", {"seen": 800})  # straight to the server, not counted
        assert monitor.seen() == 842 and dict(proxy.counts) == {"GET": 2}, proxy.log
    assert poll_interval(0) == 2.0 and poll_interval(100) == 10.0 and poll_interval(600) == 30.0


def test_the_client_retries_transient_faults(s3_server):  # noqa: F811
    """503 SlowDown, connections dropped before the answer or halfway through the body, slow
    bodies: every object still round-trips intact."""
    from vlpipe.storage import configure_retries

    s3_server.fs().mkdir("retries")
    configure_retries(8)
    faults = Faults(slowdown=0.15, drop=0.15, slow_body=0.1, seed=3)
    try:
        with proxied(s3_server.endpoint, faults) as proxy:
            run = RunDir("s3://retries/out")
            blobs = {f"k{i}": os.urandom(3000 + i) for i in range(40)}
            for key, blob in blobs.items():
                run.write_progress(key, {"blob": blob.hex()})
            states = run.progress()
            assert {k: bytes.fromhex(v["blob"]) for k, v in states.items()} == blobs
            assert {"slowdown", "drop-early", "drop-body", "slow-body"} <= set(proxy.injected)
    finally:
        configure_retries()


def test_permanent_errors_fail_at_planning_in_one_line(tiny, s3_server):  # noqa: F811
    fs = s3_server.fs()
    fs.mkdir("perm")
    upload_loose(fs, "perm", 3)
    with proxied(s3_server.endpoint, Faults(deny=("perm/locked",))) as proxy:
        with pytest.raises(VlpipeError) as denied:
            run(config(tiny, "s3://perm/loose/", "s3://perm/locked/out"))
        # fails before planning the source or loading a model: no read of an input
        assert proxy.counts["LIST"] == 0 and proxy.counts["GET"] == 0, proxy.log
    message = str(denied.value)
    assert "\n" not in message and "s3://perm/locked/out" in message, message
    assert "AccessDenied: Access Denied" in message, message
    with pytest.raises(VlpipeError) as missing:
        run(config(tiny, "s3://perm/loose/", "s3://no-such-bucket/out"))
    assert "NoSuchBucket" in str(missing.value) and "s3://no-such-bucket/out" in str(missing.value)
    assert not s3_server.fs().exists("no-such-bucket")  # never created on the user's behalf


def test_a_workers_storage_error_ends_the_run_in_one_line(tiny, s3_server):  # noqa: F811
    """The worker's marker write is refused: the run stops with the storage's message for that
    write, and a rerun once the storage answers again completes."""
    fs = s3_server.fs()
    fs.mkdir("wfail")
    uris = upload_loose(fs, "wfail", 4)
    out = "s3://wfail/out"
    with proxied(s3_server.endpoint, Faults(deny=("wfail/out/_done/",))):
        with pytest.raises(VlpipeError) as failed:
            run(config(tiny, "s3://wfail/loose/", out, shard_size=4))
    message = str(failed.value)
    assert "\n" not in message, message
    assert message.startswith("write s3://wfail/out/_done/"), message
    assert "failed: AccessDenied: Access Denied" in message, message
    again = run(config(tiny, "s3://wfail/loose/", out, shard_size=4))
    assert again.ok and again.written == 4
    assert_exactly_once(out, uris)


def test_repeated_runs_at_real_latency_and_under_faults_are_exactly_once(tiny, s3_server):  # noqa: F811
    """The issue's runs (tar shards and a listing of loose images), at a real bucket's latency,
    then with faults, each into a fresh output: every one finishes, every image exactly once."""
    fs = s3_server.fs()
    fs.mkdir("rep")
    tar_uris = upload_tars(fs, "rep", 2, 6)
    loose_uris = upload_loose(fs, "rep", 8)
    cases = [
        (REAL_LATENCY, "s3://rep/shards/{00000..00001}.tar", tar_uris),
        (FLAKY, "s3://rep/shards/{00000..00001}.tar", tar_uris),
        (FLAKY, "s3://rep/loose/", loose_uris),
    ]
    for i, (faults, source, uris) in enumerate(cases):
        out = f"s3://rep/out{i}"
        with proxied(s3_server.endpoint, faults) as proxy:
            summary = run(config(tiny, source, out, shard_size=4))
        assert summary.ok and summary.seen == len(uris), (i, summary.lines())
        assert_exactly_once(out, uris)
        if faults is FLAKY:
            assert sum(proxy.injected.values()) > 0


def test_killed_under_faults_then_resumed_is_exactly_once(tiny, s3_server, tmp_path):  # noqa: F811
    """SIGKILL a `vlpipe run` in a subprocess once it has written a done marker, through the
    flaky proxy; the rerun (same host: the dead run's lease is taken over at once) finishes."""
    fs = s3_server.fs()
    fs.mkdir("kill")
    uris = upload_tars(fs, "kill", 3, 4)
    source, out = "s3://kill/shards/{00000..00002}.tar", "s3://kill/out"
    argv = vlpipe_argv(tiny, source, out, "--shard-size", "3", "--no-index")
    log = tmp_path / "vlpipe.log"
    with proxied(s3_server.endpoint, FLAKY):
        proc = start_vlpipe(argv, log)
        deadline = time.monotonic() + 180
        try:
            while proc.poll() is None and not s3_server.fs().glob("kill/out/_done/*.json"):
                assert time.monotonic() < deadline, log.read_text()[-2000:]
                time.sleep(0.05)
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
        context = log.read_text()[-3000:]
        assert proc.returncode == -signal.SIGKILL, context
        assert not s3_server.fs().exists("kill/out/_SUCCESS"), context
        summary = run(config(tiny, source, out, shard_size=3))
    assert summary.ok and summary.processed < 12, summary.lines()
    assert_exactly_once(out, uris)


def test_an_os_error_without_strerror_is_never_none_none():
    """s3fs raises FileNotFoundError("bucket/key") with neither strerror nor filename; the CLI
    once printed it as `Error: None: None`."""
    from vlpipe.cli import os_error_line

    assert os_error_line(FileNotFoundError("out/run/_done/x.json")) == (
        "FileNotFoundError: out/run/_done/x.json"
    )
    assert os_error_line(FileNotFoundError(2, "No such file or directory", "/x")) == (
        "No such file or directory: /x"
    )
    assert os_error_line(PermissionError()) == "PermissionError"
