"""One run per output: the lease under --output (holder, host, heartbeat), on a local disk and
on S3 (a conditional create: If-None-Match: *, which the local S3 server honours)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from tests.helpers.reliability import tiny, vlpipe_argv, write_images  # noqa: F401 - session fixture
from tests.helpers.s3_server import s3_server  # noqa: F401 - session fixture
from vlpipe.cli import main
from vlpipe.errors import VlpipeError
from vlpipe.pipeline.lease import acquire, read_lease
from vlpipe.rundir import LEASE, RunDir
from vlpipe.storage import put_new


def held_by(run: RunDir, pid: int, age: float, host: str | None = None) -> dict:
    """A lease as another run would have left it."""
    body = {
        "holder": "f" * 32,
        "host": host or socket.gethostname(),
        "pid": pid,
        "started": time.time() - age,
        "heartbeat": time.time() - age,
    }
    run.fs.makedirs(run.root, exist_ok=True)
    run.fs.pipe_file(run.join(LEASE), json.dumps(body).encode())
    return body


@pytest.fixture
def other_process():
    """A live process that is not this one: a lease's holder that still runs."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield proc.pid
    proc.kill()
    proc.wait()


def test_a_second_run_is_refused_naming_the_holder(tmp_path, other_process):
    run = RunDir(str(tmp_path / "out"))
    held_by(run, other_process, age=5, host="render-7")
    with pytest.raises(VlpipeError) as refused:
        acquire(run)
    message = str(refused.value)
    assert "in use by another vlpipe run" in message and "\n" not in message
    assert "host render-7" in message and f"pid {other_process}" in message
    assert "heartbeat 5 s ago" in message and "--take-over" in message
    assert read_lease(run)["holder"] == "f" * 32  # untouched


def test_the_first_run_holds_it_until_it_releases(tmp_path):
    run = RunDir(str(tmp_path / "out"))
    lease = acquire(run)
    assert read_lease(run)["pid"] == os.getpid()
    with pytest.raises(VlpipeError, match="in use by another vlpipe run"):
        acquire(RunDir(str(tmp_path / "out")))
    lease.release()
    assert not (tmp_path / "out" / LEASE).exists()
    acquire(run).release()  # free again


def test_stale_dead_and_forced_leases_are_taken_over(tmp_path, other_process):
    run = RunDir(str(tmp_path / "out"))
    held_by(run, other_process, age=3600, host="elsewhere")  # heartbeat stopped an hour ago
    lease = acquire(run, timeout=300)
    assert read_lease(run)["holder"] == lease.body["holder"]
    lease.release()

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    held_by(run, dead.pid, age=1)  # this host, fresh heartbeat, but the process has exited
    acquire(run).release()

    held_by(run, other_process, age=1)  # alive: only --take-over takes it
    with pytest.raises(VlpipeError):
        acquire(run)
    lease = acquire(run, take_over=True)
    assert read_lease(run)["holder"] == lease.body["holder"]
    lease.release()


def test_the_heartbeat_renews_and_notices_a_take_over(tmp_path):
    run = RunDir(str(tmp_path / "out"))
    lease = acquire(run, heartbeat=0.05)
    first = read_lease(run)["heartbeat"]
    time.sleep(0.3)
    assert read_lease(run)["heartbeat"] > first
    other = acquire(RunDir(str(tmp_path / "out")), take_over=True)
    time.sleep(0.3)
    assert lease.lost
    lease.release()  # not its lease any more: left alone
    assert read_lease(run)["holder"] == other.body["holder"]
    other.release()


def test_conditional_create_on_s3(s3_server):  # noqa: F811
    fs = s3_server.fs()
    fs.mkdir("leases")
    assert put_new(fs, "leases/out/_lease.json", b"first")
    assert not put_new(fs, "leases/out/_lease.json", b"second")
    assert fs.cat("leases/out/_lease.json") == b"first"
    run = RunDir("s3://leases/other")
    lease = acquire(run)
    with pytest.raises(VlpipeError, match="in use by another vlpipe run"):
        acquire(RunDir("s3://leases/other"))
    lease.release()
    assert not s3_server.fs().exists("leases/other/_lease.json")


def test_the_cli_refuses_a_second_run_in_one_line(tiny, tmp_path, other_process):  # noqa: F811
    src, out = tmp_path / "src", tmp_path / "out"
    write_images(src, ["a.jpg", "b.png"])
    held_by(RunDir(str(out)), other_process, age=2, host="gpu-box")
    argv = vlpipe_argv(tiny, src, out)[3:]  # after `python -m vlpipe`
    refused = CliRunner().invoke(main, argv)
    assert refused.exit_code == 1
    lines = refused.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), refused.output
    assert "in use by another vlpipe run" in lines[0] and "host gpu-box" in lines[0]
    assert not (out / "parts").exists()
    forced = CliRunner().invoke(main, [*argv, "--take-over", "--no-index"])
    assert forced.exit_code == 0, forced.output
    assert "seen 2: written 2, failed 0 (OK" in forced.output
    assert not (out / LEASE).exists()  # released at the end
