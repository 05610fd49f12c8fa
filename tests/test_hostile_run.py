"""The generated hostile corpus through the whole pipeline: every file ends as a correct row or a
failure row with its stage and reason, the run finishes, and a manifest can only make vlpipe read,
never write, anywhere outside --output."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from pathlib import Path

import pytest

from tests.helpers import hostile
from tests.helpers.images import image_bytes
from tests.helpers.reliability import (
    assert_exactly_once,
    config,
    read_output,
    tiny,  # noqa: F401 - session fixture
)
from vlpipe.api import run_and_index as run
from vlpipe.schema import image_id


def snapshot(folder: Path, skip: Path | None = None) -> dict[str, tuple[int, str]]:
    """Every file and folder under `folder` (but `skip`), with mode and content hash."""
    out = {}
    for p in sorted(folder.rglob("*")):
        if skip is not None and (p == skip or skip in p.parents):
            continue
        digest = hashlib.sha1(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        out[str(p.relative_to(folder))] = (p.stat().st_mode, digest)
    return out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("hostile")
    return root, hostile.make_hostile_corpus(root)


def test_every_hostile_file_ends_as_a_correct_row_or_a_failure_row(tiny, corpus, tmp_path):  # noqa: F811
    root, expected = corpus
    out = tmp_path / "out"
    before = snapshot(root)
    summary = run(config(tiny, root, out, shard_size=8))
    assert summary.ok and summary.seen == len(expected)
    rows, failed = assert_exactly_once(str(out), [str(root / name) for name in expected])
    by_name = {Path(r["uri"]).name: r for r in rows}
    failures = {Path(f["uri"]).name: f for f in failed}
    for name, outcome in expected.items():
        if outcome == "ok":
            assert name in by_name, f"{name}: {failures.get(name)}"
            row = by_name[name]
            assert (row["width"], row["height"]) == hostile.SIZES[name], name
            assert row["caption"].strip() and len(row["embedding"]) > 0
        else:
            assert name in failures, f"{name} should fail with {outcome}"
            stage = "filter" if outcome == "too-many-pixels" else "decode"
            assert failures[name]["stage"] == stage, name
            assert failures[name]["reason"] == outcome, (name, failures[name])
            assert failures[name]["error"] and "\n" not in failures[name]["error"]
    assert summary.reasons == {
        f"{'filter' if reason == 'too-many-pixels' else 'decode'}:{reason}": sum(
            1 for o in expected.values() if o == reason
        )
        for reason in set(expected.values()) - {"ok"}
    }
    assert snapshot(root) == before  # the source is only read


def test_hostile_manifest_rows(tiny, corpus, tmp_path):  # noqa: F811
    root, _ = corpus
    manifest, expected = hostile.make_hostile_manifest(tmp_path, root)
    out = tmp_path / "out"
    summary = run(config(tiny, manifest, out))
    assert summary.ok and summary.duplicates == expected["duplicates"]
    listed = expected["records"] + expected["input_failures"]
    bad = len(expected["read_failures"]) + expected["input_failures"]
    assert (summary.seen, summary.written, summary.failed) == (listed, listed - bad, bad)
    rows, failed = read_output(str(out))
    texts = {r["uri"]: r["text"] for r in rows}
    assert texts == expected["texts"]
    for r in rows:
        assert (r["text_score"] is None) == (r["text"] is None)
    reads = {f["uri"]: f["reason"] for f in failed if f["stage"] == "read"}
    assert reads == expected["read_failures"]
    inputs = [f for f in failed if f["stage"] == "input"]
    assert len(inputs) == expected["input_failures"]
    assert all(f["reason"] == "missing-uri" and f["error"] for f in inputs)
    assert len({f["image_id"] for f in failed} | {r["image_id"] for r in rows}) == listed


def test_manifest_and_tar_names_cannot_make_vlpipe_write_elsewhere(tiny, tmp_path):  # noqa: F811
    """Uris that point into another directory, at the output itself, or tar members named
    '../x.jpg' and '/abs/x.jpg' are only ever read: everything outside --output is untouched."""
    victim = tmp_path / "victim"
    victim.mkdir()
    for i in range(3):
        (victim / f"v{i}.jpg").write_bytes(image_bytes((60, 40), "JPEG", i))
    tar_path = tmp_path / "shard.tar"
    with tarfile.open(tar_path, "w") as tar:
        for i, name in enumerate(["../escaped.jpg", "/tmp/absolute-vlpipe-test.jpg", "ok.jpg"]):
            data = image_bytes((50, 30), "JPEG", 10 + i)
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    out = tmp_path / "out"
    lines = ["uri,text"]
    lines += [f"{victim / f'v{i}.jpg'},victim {i}" for i in range(3)]
    lines += [f"{victim}/../victim/v0.jpg,the same file by another path"]
    lines += [f"{victim / 'not-there-yet.jpg'},", f"{out / 'manifest.json'},", f"{victim},"]
    manifest = tmp_path / "inputs.csv"
    manifest.write_text("\n".join(lines) + "\n")

    before = snapshot(tmp_path, skip=out)
    assert not Path("/tmp/absolute-vlpipe-test.jpg").exists()
    first = run(config(tiny, manifest, out))
    second = run(config(tiny, tar_path, out / "from-tar"))
    assert first.ok and second.ok and second.written == 3
    assert snapshot(tmp_path, skip=out) == before
    assert not (tmp_path.parent / "escaped.jpg").exists()
    assert not Path("/tmp/absolute-vlpipe-test.jpg").exists()
    rows, failed = read_output(str(out))
    assert {Path(r["uri"]).name for r in rows} == {"v0.jpg", "v1.jpg", "v2.jpg"}
    assert {Path(f["uri"]).name: f["reason"] for f in failed} == {
        "not-there-yet.jpg": "missing",
        "manifest.json": "not-an-image",
        "victim": "not-a-file",
    }


def test_unreadable_file_is_a_read_failure(tiny, tmp_path):  # noqa: F811
    if os.geteuid() == 0:
        pytest.skip("running as root: chmod 000 does not stop root from reading the file")
    src = tmp_path / "src"
    src.mkdir()
    (src / "ok.png").write_bytes(image_bytes((40, 30), "PNG", 1))
    locked = src / "locked.jpg"
    locked.write_bytes(image_bytes((40, 30), "JPEG", 2))
    locked.chmod(0)
    try:
        summary = run(config(tiny, src, tmp_path / "out"))
    finally:
        locked.chmod(0o644)
    assert summary.ok and (summary.written, summary.failed) == (1, 1)
    _, failed = read_output(str(tmp_path / "out"))
    assert failed[0]["image_id"] == image_id(str(locked))
    assert (failed[0]["stage"], failed[0]["reason"]) == ("read", "permission-denied")


@pytest.mark.timeout(180)  # a FIFO once blocked the read forever
def test_fifo_device_and_dangling_link_are_read_failures(tiny, tmp_path):  # noqa: F811
    """Files no user (root included) can read as an image: each a failure row, never a hang."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "ok.png").write_bytes(image_bytes((40, 30), "PNG", 1))
    os.mkfifo(src / "pipe.jpg")
    (src / "dangling.jpg").symlink_to(tmp_path / "gone.jpg")
    manifest = tmp_path / "inputs.csv"
    uris = [src / "ok.png", src / "pipe.jpg", src / "dangling.jpg", Path("/dev/zero")]
    manifest.write_text("uri\n" + "\n".join(str(u) for u in uris) + "\n")
    for source, out in ((src, tmp_path / "dir-out"), (manifest, tmp_path / "manifest-out")):
        summary = run(config(tiny, source, out))
        assert summary.ok and summary.written == 1
        _, failed = read_output(str(out))
        reasons = {Path(f["uri"]).name: (f["stage"], f["reason"]) for f in failed}
        expected = {"pipe.jpg": ("read", "not-a-file"), "dangling.jpg": ("read", "missing")}
        if source == manifest:
            expected["zero"] = ("read", "not-a-file")
        assert reasons == expected
