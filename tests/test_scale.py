"""Bucket scale: the driver reads no tar and no image, each tar is read once by one worker, a
remote runner never writes to the driver's disk, and workers spread over a machine's GPUs."""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import sys
import tarfile
from collections import defaultdict
from pathlib import Path

import fsspec
import pytest
from click.testing import CliRunner
from fsspec.implementations.local import LocalFileSystem

from tests.helpers.images import image_bytes
from tests.helpers.reliability import (
    REPO,
    assert_exactly_once,
    config,
    mixed_names,
    read_output,
    tiny,  # noqa: F401 - session fixture
    vlpipe_argv,
    write_images,
)
from vlpipe.api import run_and_index as run
from vlpipe.cli import main
from vlpipe.worker.devices import claim_slot, worker_device


def make_tar(path: Path, n: int, seed: int = 0) -> Path:
    """A WebDataset tar of n JPEGs with a .txt caption each."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for i in range(n):
            for name, data in (
                (f"{seed:03d}{i:05d}.jpg", image_bytes((70 + i % 9, 50), "JPEG", seed * 100 + i)),
                (f"{seed:03d}{i:05d}.txt", f"caption {seed} {i}".encode()),
            ):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


class CountingFS(LocalFileSystem):
    """A local filesystem that counts the bytes read of every file, in this process."""

    protocol = "vlpipe-count"
    root_marker = "/"
    reads: dict[str, int] = defaultdict(int)

    @classmethod
    def _strip_protocol(cls, path):
        path = path[len(cls.protocol) + 3 :] if path.startswith(cls.protocol + "://") else path
        return super()._strip_protocol(path)

    def unstrip_protocol(self, name: str) -> str:
        return f"{self.protocol}://{name}"

    def _open(self, path, mode="rb", **kwargs):
        f = super()._open(path, mode, **kwargs)
        read = f.read

        def counted(*args):
            data = read(*args)
            CountingFS.reads[path] += len(data)
            return data

        f.read = counted
        return f


def test_a_tar_of_two_and_a_half_shard_sizes_is_read_once(tiny, tmp_path):  # noqa: F811
    fsspec.register_implementation(CountingFS.protocol, CountingFS, clobber=True)
    CountingFS.reads.clear()
    tar = make_tar(tmp_path / "shards" / "a.tar", 25)
    out = tmp_path / "out"
    summary = run(config(tiny, f"{CountingFS.protocol}://{tar}", out, shard_size=10))
    assert summary.ok and (summary.seen, summary.written) == (25, 25)
    assert len(list((out / "parts").glob("part-*.parquet"))) == 3  # a part every 10 images
    read = CountingFS.reads[str(tar)]
    assert tar.stat().st_size <= read <= 1.05 * tar.stat().st_size, (read, tar.stat().st_size)
    rows, _ = read_output(str(out))
    assert sorted(r["text"] for r in rows) == sorted(f"caption 0 {i}" for i in range(25))


def _strace_reads(log: Path) -> tuple[int, dict[tuple[int, str], int]]:
    """(the traced command's pid, bytes read per (pid, file)) from `strace -f -y` output."""
    reads: dict[tuple[int, str], int] = defaultdict(int)
    pids = []
    for line in log.read_text().splitlines():
        if not line[:1].isdigit():
            continue
        pids.append(int(line.split()[0]))
        m = re.match(r"(\d+)\s+p?read(?:64)?\(\d+<([^>]+)>.*\)\s+=\s+(\d+)", line)
        if m:
            reads[(int(m.group(1)), m.group(2))] += int(m.group(3))
    return min(pids), reads


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace (apt install strace)")
@pytest.mark.parametrize("kind", ["tars", "images"])
def test_the_driver_opens_no_tar_and_no_image(tiny, tmp_path, kind):  # noqa: F811
    """Every read of the inputs, per process, with two worker processes: the driver reads none,
    each tar is read by exactly one worker, about once."""
    if kind == "tars":
        files = [make_tar(tmp_path / "src" / f"s{i}.tar", 12, seed=i) for i in range(3)]
        source, expected = str(tmp_path / "src" / "*.tar"), 36
    else:
        files = write_images(tmp_path / "src", mixed_names(14))
        source, expected = str(tmp_path / "src"), 14
    out, log = tmp_path / "out", tmp_path / "strace.log"
    argv = vlpipe_argv(tiny, source, out, "--workers", "2", "--shard-size", "5", "--no-index")
    watched = [a for f in files for a in ("-P", str(f))]
    trace = ["strace", "-f", "-qq", "-e", "trace=read,pread64", "-y", *watched, "-o", str(log)]
    proc = subprocess.run([*trace, "--", *argv], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert f"seen {expected}: written {expected}, failed 0" in proc.stdout, proc.stdout
    driver, reads = _strace_reads(log)
    assert not [k for k in reads if k[0] == driver], "the driver read an input"
    for f in files:
        readers = {pid: n for (pid, path), n in reads.items() if path == str(f)}
        assert len(readers) == 1, (f.name, readers)  # one worker per input
        assert f.stat().st_size <= sum(readers.values()) <= 1.05 * f.stat().st_size
    assert len({pid for pid, _ in reads}) >= 1 and driver not in {pid for pid, _ in reads}


def test_a_remote_runner_refuses_a_local_output(tmp_path):
    src = tmp_path / "src"
    write_images(src, mixed_names(1))
    argv = ["run", str(src), "--output", str(tmp_path / "out"), "--no-progress", "--runner"]
    result = CliRunner().invoke(main, [*argv, "dask", "--dask_client_address", "127.0.0.1:1"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "local path" in result.output and "--shared-output" in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert not (tmp_path / "out").exists()  # refused before anything was written
    from vlpipe.pipeline.options import RunConfig

    beam_args = ["--runner", "DataflowRunner"]
    RunConfig(str(src), "gs://bucket/out", beam_args=beam_args).validate()  # a shared URL is fine
    RunConfig(str(src), str(tmp_path), beam_args=beam_args, shared_output=True).validate()
    RunConfig(str(src), str(tmp_path), beam_args=["--runner", "DirectRunner"]).validate()


_HOLD_SLOT = """
import sys, time
from vlpipe.worker.devices import claim_slot, worker_device
print(claim_slot(sys.argv[1]), worker_device("auto", gpus=2, lock_dir=sys.argv[1]), flush=True)
time.sleep(30)
"""


def test_worker_processes_get_distinct_slots_and_spread_over_gpus(tmp_path):
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _HOLD_SLOT, str(tmp_path)], cwd=REPO, stdout=subprocess.PIPE
        )
        for _ in range(3)
    ]
    try:
        lines = [p.stdout.readline().decode().split() for p in procs]
    finally:
        for p in procs:
            p.kill()
            p.wait()
    slots = sorted(int(slot) for slot, _ in lines)
    assert slots == [0, 1, 2]
    assert sorted(device for _, device in lines) == ["cuda:0", "cuda:0", "cuda:1"]
    # a slot is freed when its process dies (even by SIGKILL): the next process gets slot 0
    assert claim_slot(str(tmp_path)) == 0
    assert worker_device("cpu", gpus=4) == "cpu" and worker_device("cuda:3", gpus=4) == "cuda:3"
    assert worker_device("auto", gpus=1) == "auto" and worker_device("auto", gpus=0) == "auto"


def test_manifest_rows_are_read_a_row_group_at_a_time(tiny, tmp_path):  # noqa: F811
    """A Parquet manifest is planned from its footer into row ranges; every row ends in exactly
    one output row, missing files as read failures."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    images = write_images(tmp_path / "img", mixed_names(7))
    uris = [str(p) for p in images] + [str(tmp_path / "img" / f"gone{i}.jpg") for i in range(23)]
    pq.write_table(pa.table({"uri": uris}), tmp_path / "m.parquet", row_group_size=8)
    summary = run(config(tiny, tmp_path / "m.parquet", tmp_path / "out", shard_size=4))
    assert summary.ok and (summary.seen, summary.written, summary.failed) == (30, 7, 23)
    assert summary.reasons == {"read:missing": 23}
    markers = [json.loads(p.read_text()) for p in (tmp_path / "out" / "_done").glob("*.json")]
    assert sorted(m["seen"] for m in markers) == [2] + [4] * 7  # row groups of 8, 8, 8, 6 in 4s
    assert_exactly_once(str(tmp_path / "out"), uris)


_DESCRIBE = """
import json, sys
from vlpipe.models.describe import describe_models
d = describe_models(sys.argv[1], sys.argv[2])
print(json.dumps({"models": d, "torch": "torch" in sys.modules}))
"""


def test_the_driver_learns_models_from_config_files_not_weights(tiny):  # noqa: F811
    """What the launcher records (dimension, fingerprint) equals what the loaded models say,
    and for vlpipe-mini it gets there without even importing torch."""
    from vlpipe.models.registry import load_captioner, load_embedder

    for captioner, embedder in (("mini", "mini"), (tiny["blip"], tiny["clip"])):
        proc = subprocess.run(
            [sys.executable, "-c", _DESCRIBE, captioner, embedder],
            cwd=REPO, capture_output=True, text=True, check=True,
        )  # fmt: skip
        got = json.loads(proc.stdout.strip().splitlines()[-1])
        loaded = load_embedder(embedder, device="cpu")
        assert got["models"]["embedder"]["fingerprint"] == loaded.fingerprint()
        assert got["models"]["embedder"]["dim"] == loaded.dim
        assert got["models"]["captioner"]["config"]["name" if captioner == "mini" else "family"]
        if captioner == "mini":
            assert got["torch"] is False
            assert got["models"]["captioner"]["config"] == load_captioner("mini").describe()
