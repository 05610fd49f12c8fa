"""The pipeline on Beam's DaskRunner against a real local dask.distributed cluster (2 worker
processes): the same set of rows as the DirectRunner, shards spread over both workers, and the
models loaded once per worker process, not once per bundle."""

from __future__ import annotations

import os
import socket
from collections import Counter

import numpy as np
import pytest

from tests.helpers.reliability import (
    config,
    mixed_names,
    read_output,
    tiny,  # noqa: F401 - session fixture
    write_images,
)
from vlpipe.api import run_and_index as run
from vlpipe.errors import VlpipeError
from vlpipe.rundir import RunDir

pytest.importorskip("distributed", reason="needs dask.distributed (pip install 'vlpipe[dask]')")


@pytest.fixture(scope="module")
def cluster():
    """Closed in the safe order: our client, then the cluster (the runner closes its own)."""
    from dask.distributed import Client, LocalCluster

    cluster = LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    )
    client = Client(cluster)
    yield cluster, client
    client.close()
    try:
        cluster.close(timeout=60)
    except TimeoutError:  # a nanny missed its 5 s kill deadline on a loaded machine (seen in CI
        pass  # under load); the tests' assertions are already made, the processes are daemonic


def count_worker_calls() -> None:
    """Runs inside each worker process: wrap the real model loader and shard processor with call
    counters (they still do the real work) so the test can ask each worker what it did."""
    import vlpipe.models.registry as registry
    import vlpipe.worker.shard as shard

    calls = registry.__dict__.setdefault("_test_calls", Counter())

    def counted(module, name):
        real = getattr(module, name)

        def wrapper(*args, **kwargs):
            calls[name] += 1
            return real(*args, **kwargs)

        setattr(module, name, wrapper)

    counted(registry, "load_models")
    counted(shard, "process_shard")


def worker_calls() -> dict:
    import vlpipe.models.registry as registry

    return dict(registry.__dict__.get("_test_calls", {}))


def rows_by_id(output) -> tuple[dict, dict]:
    rows, failed = read_output(str(output))
    return (
        {r["image_id"]: r for r in rows},
        {f["image_id"]: (f["uri"], f["stage"], f["reason"]) for f in failed},
    )


def test_dask_runner_matches_direct_runner(tiny, cluster, tmp_path):  # noqa: F811
    cluster, client = cluster
    src = tmp_path / "src"
    write_images(src, mixed_names(26))
    (src / "broken.jpg").write_bytes(b"GIF89a but not really")
    (src / "empty.png").write_bytes(b"")

    direct = run(config(tiny, src, tmp_path / "direct", shard_size=4))
    client.run(count_worker_calls)
    beam_args = ["--runner", "dask", "--dask_client_address", cluster.scheduler_address]
    with pytest.raises(VlpipeError, match="local path"):  # workers elsewhere cannot write here
        run(config(tiny, src, tmp_path / "dask", shard_size=4, beam_args=beam_args))
    dask = run(
        config(tiny, src, tmp_path / "dask", shard_size=4, beam_args=beam_args, shared_output=True)
    )
    calls = client.run(worker_calls)

    assert direct.ok and dask.ok
    assert (dask.seen, dask.written, dask.failed) == (direct.seen, direct.written, direct.failed)
    assert (dask.written, dask.failed) == (26, 2)

    # The same set of rows: ids, uris, sizes, captions; embeddings equal up to float16 rounding.
    want, want_failed = rows_by_id(tmp_path / "direct")
    got, got_failed = rows_by_id(tmp_path / "dask")
    assert got_failed == want_failed and set(got) == set(want)
    for i, row in want.items():
        for column in ("uri", "width", "height", "caption", "text"):
            assert got[i][column] == row[column], (column, row["uri"])
        assert np.allclose(got[i]["embedding"], row["embedding"], atol=2e-3), row["uri"]

    # Every spec ran on one of the cluster's 2 worker processes, and both took some: the done
    # markers say which process wrote them (neither the driver nor a single worker did it all).
    markers = RunDir(str(tmp_path / "dask")).markers().values()
    writers = Counter(m["worker"] for m in markers)
    assert sum(writers.values()) == len(markers) >= 5, writers
    assert len(writers) == 2, f"one process did all the work: {writers}"
    assert f"{socket.gethostname()}:{os.getpid()}" not in writers  # never the driver
    # A worker that took specs loaded the models once, however many specs (bundles) it ran.
    shards = {address: c.get("process_shard", 0) for address, c in calls.items()}
    loads = {address: c.get("load_models", 0) for address, c in calls.items()}
    assert len(calls) == 2 and sum(shards.values()) == len(markers), calls
    assert all(loads[a] == 1 for a, n in shards.items() if n), f"model loads: {calls}"


def test_dask_partition_default_is_one_per_shard_unless_given():
    from vlpipe.pipeline.options import DASK_RUNNER, dask_partitions

    dask = ["--runner", DASK_RUNNER, "--dask_client_address", "127.0.0.1:8786"]
    assert dask_partitions(dask, 7)[-1] == "--dask_npartitions=7"
    assert dask_partitions([*dask, "--dask_partition_size=2"], 7) == [
        *dask,
        "--dask_partition_size=2",
    ]
    assert dask_partitions(["--runner", "DirectRunner"], 7) == ["--runner", "DirectRunner"]
