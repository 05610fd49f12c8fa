"""Shared by the reliability tests (resume, S3, Dask, hostile corpus): tiny models built once per
session, image folders, `vlpipe run` in a real subprocess, and the exactly-once check."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.helpers.images import FORMATS, image_bytes
from tests.helpers.paths import REPO
from vlpipe.pipeline.options import RunConfig
from vlpipe.rundir import RunDir
from vlpipe.schema import image_id


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> dict[str, str]:
    """Tiny random BLIP and CLIP checkpoints, built once for every module that asks."""
    from bench.hf_tiny import build_tiny_blip, build_tiny_clip

    root = tmp_path_factory.getbasetemp() / "reliability-models"
    if not (root / "built").exists():
        build_tiny_blip(root / "blip")
        build_tiny_clip(root / "clip")
        (root / "built").write_text("ok")
    return {"blip": str(root / "blip"), "clip": str(root / "clip")}


def write_images(folder: Path, names: list[str], seed: int = 0) -> list[Path]:
    """Small valid images of the format each name's extension says."""
    by_ext = dict(FORMATS)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, name in enumerate(names):
        fmt = by_ext[name.rsplit(".", 1)[1]]
        size = (40 + (seed + i) * 7 % 90, 36 + (seed + i) * 11 % 70)
        (folder / name).write_bytes(image_bytes(size, fmt, seed + i))
        paths.append(folder / name)
    return paths


def mixed_names(n: int, prefix: str = "img") -> list[str]:
    return [f"{prefix}{i:03d}.{FORMATS[i % len(FORMATS)][0]}" for i in range(n)]


def config(tiny: dict[str, str], source, output, **kw) -> RunConfig:
    base = dict(
        captioner=tiny["blip"],
        embedder=tiny["clip"],
        batch_size=8,
        max_caption_tokens=6,
        decode_threads=2,
        progress=False,
        build_index=False,
        shard_size=5,
    )
    base.update(kw)
    return RunConfig(source=str(source), output=str(output), **base)


def vlpipe_argv(tiny: dict[str, str], source, output, *extra: str) -> list[str]:
    """`python -m vlpipe run` with the tiny models and small batches."""
    return [
        sys.executable,
        "-m",
        "vlpipe",
        "run",
        str(source),
        "--output",
        str(output),
        "--captioner",
        tiny["blip"],
        "--embedder",
        tiny["clip"],
        "--batch-size",
        "8",
        "--max-caption-tokens",
        "6",
        "--decode-threads",
        "2",
        "--no-progress",
        *extra,
    ]


def start_vlpipe(argv: list[str], log: Path) -> subprocess.Popen:
    """In its own session, so a kill of its process group reaches any worker it started."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    with log.open("ab") as out:
        return subprocess.Popen(
            argv, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def run_vlpipe(argv: list[str], timeout: float = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def read_output(output: str) -> tuple[list[dict], list[dict]]:
    """Every row of every part and failure part, read strictly: a torn part fails the test."""
    run = RunDir(str(output))
    rows = [r for p in run.parts() for r in pq.read_table(run.fs.open(p, "rb")).to_pylist()]
    failed = [
        r for p in run.failed_parts() for r in pq.read_table(run.fs.open(p, "rb")).to_pylist()
    ]
    return rows, failed


def assert_exactly_once(output: str, uris: list[str]) -> tuple[list[dict], list[dict]]:
    """Every input uri in exactly one row of parts + failed, nothing else, and _SUCCESS present."""
    rows, failed = read_output(output)
    ids = Counter(r["image_id"] for r in rows) + Counter(f["image_id"] for f in failed)
    duplicated = {i: n for i, n in ids.items() if n > 1}
    assert not duplicated, f"inputs in more than one row: {duplicated}"
    expected = {image_id(u) for u in uris}
    assert set(ids) == expected, (
        f"lost {len(expected - set(ids))}, unexpected {len(set(ids) - expected)}"
    )
    assert all(image_id(r["uri"]) == r["image_id"] for r in rows + failed)
    assert RunDir(str(output)).is_complete(), "no _SUCCESS"
    return rows, failed


def summary_counts(stdout: str) -> dict[str, int]:
    """The numbers of the CLI's summary lines ('seen N: written W, failed F (OK ...)', ...)."""
    import re

    first = re.search(r"seen (\d+): written (\d+), failed (\d+) \((OK|COUNT MISMATCH)", stdout)
    this = re.search(r"this run: processed (\d+)", stdout)
    assert first and this, stdout
    seen, written, failed, status = first.groups()
    return {
        "seen": int(seen),
        "written": int(written),
        "failed": int(failed),
        "ok": status == "OK",
        "processed": int(this.group(1)),
    }
