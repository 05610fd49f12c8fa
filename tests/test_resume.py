"""Kill `vlpipe run` with SIGKILL at random points, rerun the same command, and check that every
input ends in exactly one row: no duplicate, no loss, no torn part. Real processes, real files."""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.helpers.images import image_bytes
from tests.helpers.reliability import (
    assert_exactly_once,
    config,
    mixed_names,
    read_output,
    run_vlpipe,
    start_vlpipe,
    summary_counts,
    tiny,  # noqa: F401 - session fixture
    vlpipe_argv,
    write_images,
)
from vlpipe.api import run_and_index as run
from vlpipe.cli import main
from vlpipe.errors import VlpipeError
from vlpipe.rundir import TMP_PREFIX

BROKEN = {"broken-truncated.jpg", "broken-empty.jpg", "broken-html.jpg"}


def add_broken(folder: Path) -> None:
    good = image_bytes((120, 90), "JPEG", 7)
    (folder / "broken-truncated.jpg").write_bytes(good[: len(good) // 2])
    (folder / "broken-empty.jpg").write_bytes(b"")
    (folder / "broken-html.jpg").write_bytes(b"<html><body>404 not found</body></html>")


def uris(folder: Path) -> list[str]:
    return sorted(str(p) for p in folder.iterdir() if p.is_file())


def part_files(output: Path) -> list[Path]:
    folder = output / "parts"
    if not folder.exists():
        return []
    return list(folder.glob("part-*.parquet"))


def kill_when_parts(
    argv: list[str], output: Path, log: Path, target: int, jitter: float
) -> subprocess.Popen:
    """Start vlpipe, SIGKILL its whole process group once `target` parts exist, plus up to
    `jitter` seconds, so the kill lands mid-shard. The jitter ends early at `target + 2` parts:
    with tiny models a whole run can finish inside the jitter, and then nothing is interrupted."""
    proc = start_vlpipe(argv, log)
    deadline = time.monotonic() + 300
    try:
        while proc.poll() is None and len(part_files(output)) < target:
            assert time.monotonic() < deadline, "no progress: " + log.read_text()[-2000:]
            time.sleep(0.01)
        jitter_ends = time.monotonic() + jitter
        while time.monotonic() < jitter_ends and len(part_files(output)) < target + 2:
            time.sleep(0.005)
    finally:
        kill_group(proc)
    return proc


def kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass  # it had already finished
    proc.wait(timeout=60)


def snapshot(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def make_source(folder: Path, n_good: int) -> None:
    write_images(folder, mixed_names(n_good))
    add_broken(folder)


def test_sigkill_then_rerun_is_exactly_once_and_new_files_are_indexed(tiny, tmp_path):  # noqa: F811
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    src, out, log = tmp_path / "src", tmp_path / "out", tmp_path / "vlpipe.log"
    make_source(src, 57)
    argv = vlpipe_argv(tiny, src, out, "--shard-size", "5")  # 12 shards

    killed = kill_when_parts(argv, out, log, target=rng.randint(1, 7), jitter=rng.uniform(0, 0.4))
    context = f"seed {seed}; log:\n{log.read_text()[-3000:]}"
    assert killed.returncode == -signal.SIGKILL, context
    assert not (out / "_SUCCESS").exists(), context
    rows, failed = read_output(str(out))  # whatever is there is whole: no torn part
    assert 5 <= len(rows) + len(failed) < 60, context  # the kill interrupted work in progress
    done_before = inputs_done(out)  # a rerun resumes at spec granularity: these are skipped

    final = run_vlpipe(argv)
    assert final.returncode == 0, final.stdout + final.stderr + context
    counts = summary_counts(final.stdout)
    assert counts == {
        "seen": 60,
        "written": 57,
        "failed": 3,
        "ok": True,
        "processed": 60 - done_before,
    }, final.stdout
    rows, failed = assert_exactly_once(str(out), uris(src))
    assert {Path(f["uri"]).name for f in failed} == BROKEN
    assert all(f["stage"] == "decode" and f["reason"] and f["error"] for f in failed)
    assert not [p for p in out.rglob(TMP_PREFIX + "*")], "temp files left behind"
    assert "index:" in final.stdout and index_count(out) == 57

    # New files in the source are picked up by the next run and added to the index.
    new = write_images(src, ["new-a.png", "new b ü.jpg", "new-c.webp"], seed=500)
    more = run(config(tiny, src, out, shard_size=5, build_index=True))
    assert more.ok and (more.seen, more.processed, more.written) == (63, 3, 60)
    assert more.index["last_action"]["action"] == "added"
    rows, _ = assert_exactly_once(str(out), uris(src))
    assert {str(p) for p in new} <= {r["uri"] for r in rows}
    assert index_count(out) == 60


def inputs_done(out: Path) -> int:
    """Inputs of the specs whose done marker was written (what a rerun skips)."""
    import json

    folder = out / "_done"
    markers = [json.loads(p.read_text()) for p in folder.glob("*.json")] if folder.exists() else []
    return sum(m["seen"] for m in markers if m["done"])


@pytest.mark.parametrize("workers", [1, 2])
def test_sigkill_with_workers_then_rerun_is_exactly_once(tiny, tmp_path, workers):  # noqa: F811
    """The short form, also with two local worker processes: killed after some parts, before
    the end; the rerun of the same command finishes the rest, every input in exactly one row."""
    src, out, log = tmp_path / "src", tmp_path / "out", tmp_path / "vlpipe.log"
    make_source(src, 37)
    argv = vlpipe_argv(tiny, src, out, "--shard-size", "3", "--workers", str(workers))
    killed = kill_when_parts(argv, out, log, target=2, jitter=0.1)
    context = f"log:\n{log.read_text()[-3000:]}"
    assert killed.returncode == -signal.SIGKILL, context
    assert part_files(out) and not (out / "_SUCCESS").exists(), context  # interrupted mid-run
    done_before = inputs_done(out)
    assert done_before < 40, context
    final = run_vlpipe([*argv, "--no-index"])
    assert final.returncode == 0, final.stdout + final.stderr + context
    counts = summary_counts(final.stdout)
    assert counts == {"seen": 40, "written": 37, "failed": 3, "ok": True,
                      "processed": 40 - done_before}, final.stdout  # fmt: skip
    assert_exactly_once(str(out), uris(src))


def index_count(out: Path) -> int:
    import json

    return json.loads((out / "index" / "meta.json").read_text())["count"]


@pytest.mark.slow
def test_sigkill_at_any_moment_repeatedly_then_rerun_is_exactly_once(tiny, tmp_path):  # noqa: F811
    """Kills at random times, not waiting for parts: during start-up, listing, the manifest and
    temp-file writes, shards, the index build; with two local worker processes."""
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    src, out, log = tmp_path / "src", tmp_path / "out", tmp_path / "vlpipe.log"
    make_source(src, 57)
    argv = vlpipe_argv(tiny, src, out, "--shard-size", "3", "--workers", "2")
    for _ in range(4):
        proc = start_vlpipe(argv, log)
        try:
            time.sleep(rng.uniform(1.0, 25.0))
        finally:
            kill_group(proc)
    context = f"seed {seed}; log:\n{log.read_text()[-3000:]}"
    read_output(str(out))  # every part present is whole
    final = run_vlpipe(argv, timeout=400)
    assert final.returncode == 0, final.stdout + final.stderr + context
    assert summary_counts(final.stdout)["ok"]
    assert_exactly_once(str(out), uris(src))
    assert index_count(out) == 57


def test_sigkill_during_retry_failed_then_rerun_is_exactly_once(tiny, tmp_path):  # noqa: F811
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    src, out, log = tmp_path / "src", tmp_path / "out", tmp_path / "vlpipe.log"
    names = mixed_names(24)
    write_images(src, names)
    broken = names[::2]  # 12 failures spread over every shard
    for name in broken:
        (src / name).write_bytes(b"\x00" * 64)
    first = run(config(tiny, src, out, shard_size=4))
    assert first.ok and (first.written, first.failed) == (12, 12)
    failed_before = read_output(str(out))[1]

    write_images(src, broken, seed=100)  # the files were fixed upstream
    argv = vlpipe_argv(tiny, src, out, "--shard-size", "3", "--no-index", "--retry-failed")
    before = len(part_files(out))
    killed = kill_when_parts(
        argv, out, log, target=before + rng.randint(1, 3), jitter=rng.uniform(0, 0.3)
    )
    context = f"seed {seed}; log:\n{log.read_text()[-3000:]}"
    assert killed.returncode == -signal.SIGKILL, context

    # the same command again (in-process here: the same code without an interpreter start-up)
    final = run(config(tiny, src, out, shard_size=3, retry_failed=True))
    assert final.ok and (final.written, final.failed) == (24, 0), context
    rows, failed = assert_exactly_once(str(out), uris(src))
    assert len(rows) == 24 and not failed
    # the old failure rows are archived beside the live ones, never deleted
    archived = [p for p in (out / "failed").glob("retried-*/*.parquet")]
    import pyarrow.parquet as pq

    archived_ids = {i for p in archived for i in pq.read_table(p).column("image_id").to_pylist()}
    assert archived_ids == {f["image_id"] for f in failed_before}


def test_a_different_model_config_never_touches_the_previous_run(tiny, tmp_path):  # noqa: F811
    src, out = tmp_path / "src", tmp_path / "out"
    write_images(src, mixed_names(6))
    assert run(config(tiny, src, out)).ok
    (out / "notes.txt").write_text("the user's own file")
    before = snapshot(out)
    args = ["run", str(src), "--output", str(out), "--captioner", tiny["blip"]]
    args += ["--embedder", tiny["clip"], "--batch-size", "4", "--no-progress", "--no-index"]
    refused = CliRunner().invoke(main, [*args, "--max-caption-tokens", "3"])
    assert refused.exit_code == 1
    assert "different model config" in refused.output and "--overwrite" in refused.output
    assert len(refused.output.strip().splitlines()) == 1 and "Traceback" not in refused.output
    assert snapshot(out) == before

    # --overwrite replaces vlpipe's own files only
    replaced = CliRunner().invoke(main, [*args, "--max-caption-tokens", "3", "--overwrite"])
    assert replaced.exit_code == 0, replaced.output
    assert (out / "notes.txt").read_text() == "the user's own file"
    assert_exactly_once(str(out), uris(src))


def test_parts_without_a_manifest_are_not_replaced(tiny, tmp_path):  # noqa: F811
    src, out = tmp_path / "src", tmp_path / "out"
    write_images(src, mixed_names(3))
    assert run(config(tiny, src, out)).ok
    (out / "manifest.json").unlink()
    before = snapshot(out)
    with pytest.raises(VlpipeError, match="no manifest.json"):
        run(config(tiny, src, out))
    assert snapshot(out) == before


def test_torn_and_foreign_parts_are_set_aside_and_their_inputs_redone(tiny, tmp_path):  # noqa: F811
    import pyarrow.parquet as pq

    from vlpipe.index.build import build_index
    from vlpipe.rundir import RunDir

    src, out = tmp_path / "src", tmp_path / "out"
    write_images(src, mixed_names(12))
    assert run(config(tiny, src, out, shard_size=4)).ok
    parts = sorted((out / "parts").glob("part-*.parquet"))
    torn = parts[0]
    redo = set(pq.read_table(torn).column("image_id").to_pylist())
    data = torn.read_bytes()
    torn.write_bytes(data[: len(data) // 2])  # no footer: cannot even be opened
    (out / "parts" / "part-garbage.parquet").write_bytes(b"\x00garbage" * 300)
    (out / "failed").mkdir(exist_ok=True)
    (out / "failed" / "part-junk.parquet").write_bytes(b"PAR1 but not really")

    # Readers skip and report them, never crash.
    reader = RunDir(str(out))
    assert len(reader.image_ids()) == 12 - len(redo) and reader.image_ids(failed=True) == set()
    names = {Path(p).name for p in reader.corrupt}
    assert names == {torn.name, "part-garbage.parquet", "part-junk.parquet"}
    meta = build_index(str(out), progress=False)  # indexes the readable parts, names the others
    assert meta["count"] == 12 - len(redo)
    assert set(meta["last_action"]["corrupt_parts"]) == {torn.name, "part-garbage.parquet"}

    # A rerun sets them aside for inspection and processes the torn part's inputs again, once.
    summary = run(config(tiny, src, out, shard_size=4))
    assert summary.ok and summary.processed == len(redo)
    assert {Path(p).name for p in summary.corrupt_parts} == names
    assert any("corrupt part set aside" in line for line in summary.lines())
    assert {p.name for p in (out / "parts" / "corrupt").iterdir()} == names - {"part-junk.parquet"}
    assert [p.name for p in (out / "failed" / "corrupt").iterdir()] == ["part-junk.parquet"]
    assert_exactly_once(str(out), uris(src))
    again = run(config(tiny, src, out, shard_size=4, build_index=True))
    assert again.corrupt_parts == [] and again.index["count"] == 12


def test_a_rerun_reads_markers_not_image_ids(tiny, tmp_path):  # noqa: F811
    """Resume is O(shards): with every part replaced by garbage of the same size (so a listing
    cannot tell), a rerun still skips every spec: it never opened a part to read its ids."""
    src, out = tmp_path / "src", tmp_path / "out"
    write_images(src, mixed_names(10))
    assert run(config(tiny, src, out, shard_size=3)).ok
    for part in (out / "parts").glob("part-*.parquet"):
        part.write_bytes(b"\x00" * part.stat().st_size)
    again = run(config(tiny, src, out, shard_size=3))
    assert again.ok and again.processed == 0 and again.written == 10
    assert again.corrupt_parts == []
