"""What an output directory already holds: refuse a foreign run, skip done inputs, retry failures.

Resume is by image_id: an input is done when a completed part or a failure part holds its id.
Parts are atomic, so a run killed at any moment leaves only whole parts, and a rerun processes
exactly the inputs that have no row yet.
"""

from __future__ import annotations

import posixpath
import time

from vlpipe.errors import VlpipeError
from vlpipe.rundir import FAILED, INDEX, MANIFEST, PARTS, SUCCESS, TMP_PREFIX, RunDir

WORK = "_work"
CORRUPT = "corrupt"


def check_output(run: RunDir, model_config: dict, overwrite: bool) -> None:
    """Refuse to mix runs of different models in one directory unless told to overwrite."""
    manifest = run.read_manifest()
    has_rows = bool(run.parts() or run.failed_parts())
    if overwrite:
        clear(run)
    elif manifest is not None and manifest.get("config") != model_config:
        old = manifest.get("config", {})
        raise VlpipeError(
            f"{run.path} holds a run with a different model config "
            f"(captioner {old.get('captioner')!r}, embedder {old.get('embedder')!r}); "
            "choose another --output or pass --overwrite to replace it"
        )
    elif manifest is None and has_rows:
        raise VlpipeError(
            f"{run.path} holds parts but no manifest.json; pass --overwrite to replace them"
        )
    check_writable(run)


def check_writable(run: RunDir) -> None:
    probe = run.join(f".vlpipe-write-test-{time.time_ns()}")
    try:
        run.fs.makedirs(run.root, exist_ok=True)
        with run.fs.open(probe, "wb") as f:
            f.write(b"ok")
        run.fs.rm(probe)
    except OSError as exc:
        raise VlpipeError(f"cannot write to output {run.path}: {exc.strerror or exc}") from None


def clear(run: RunDir) -> None:
    """--overwrite: remove a previous run's outputs (and only vlpipe's own files)."""
    for name in (PARTS, FAILED, INDEX, WORK):
        if run.fs.exists(run.join(name)):
            run.fs.rm(run.join(name), recursive=True)
    for name in (MANIFEST, SUCCESS):
        if run.fs.exists(run.join(name)):
            run.fs.rm(run.join(name))


def done_ids(run: RunDir) -> set[str]:
    return run.image_ids() | run.image_ids(failed=True)


def set_aside_corrupt(run: RunDir) -> list[str]:
    """Move the parts `done_ids` could not read to `<parts|failed>/corrupt/`, kept for inspection.

    Their inputs have no readable row, so this run processes them again; moved aside, a part that
    was only unreadable for a moment can never come back as a second row for the same inputs.
    """
    moved = []
    for path in dict.fromkeys(run.corrupt):
        folder = posixpath.join(posixpath.dirname(path), CORRUPT)
        run.fs.makedirs(folder, exist_ok=True)
        target = posixpath.join(folder, posixpath.basename(path))
        run.fs.mv(path, target)
        moved.append(run.fs.unstrip_protocol(target))
    run.corrupt.clear()
    return moved


def remove_temp_files(run: RunDir) -> None:
    """A run killed mid-write leaves `.tmp-` files (never read as parts); clear them away."""
    for folder in (run.root, run.join(PARTS), run.join(FAILED)):
        run.fs.invalidate_cache(folder)
        if run.fs.exists(folder):
            for path in run.fs.ls(folder, detail=False):
                if posixpath.basename(path).startswith(TMP_PREFIX):
                    run.fs.rm(path)


def archive_failures(run: RunDir) -> int:
    """--retry-failed: move failure parts aside so their inputs count as pending again."""
    parts = run.failed_parts()
    if not parts:
        return 0
    folder = run.join(FAILED, f"retried-{time.strftime('%Y%m%dT%H%M%S')}")
    run.fs.makedirs(folder, exist_ok=True)
    for path in parts:
        run.fs.mv(path, posixpath.join(folder, posixpath.basename(path)))
    return len(parts)
