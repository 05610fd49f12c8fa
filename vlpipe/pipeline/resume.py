"""What an output directory already holds: refuse a foreign run, skip done specs, retry failures.

Resume is by shard spec: a spec is done when its done marker exists with the spec's digest (so a
tar, a manifest row range or a listing page is skipped without reading one image_id). A spec that
changed since (a page that gained a file, a tar rewritten) is redone, skipping the inputs that
the parts of overlapping markers already hold, so every input still has exactly one row. The
driver reads markers and one listing of parts/ and failed/: O(shards), never O(images).
"""

from __future__ import annotations

import bisect
import posixpath
import time
from dataclasses import dataclass, field

from vlpipe.errors import VlpipeError
from vlpipe.images.decode import Filters
from vlpipe.outputs.formats import beside_parts
from vlpipe.outputs.parquet import is_part_name, part_name
from vlpipe.reading.specs import ShardSpec
from vlpipe.rundir import (
    DEDUP,
    DONE,
    FAILED,
    INDEX,
    MANIFEST,
    PARTS,
    PLAN,
    PROGRESS,
    SUCCESS,
    TMP_PREFIX,
    RunDir,
    write_table_atomic,
)
from vlpipe.schema import STAGE_FILTER
from vlpipe.storage import StorageError, is_object_store, listing, put
from vlpipe.worker.shard import ShardWork

CORRUPT = "corrupt"
#: the output layout this code writes (1: resume by image_id, no done markers)
LAYOUT_VERSION = 2


def check_output(run: RunDir, model_config: dict, overwrite: bool) -> None:
    """Refuse to mix runs of different models in one directory unless told to overwrite."""
    manifest = run.read_manifest()
    has_rows = bool(run.parts() or run.failed_parts())
    if overwrite:
        clear(run)
    elif manifest is not None and manifest.get("config") != model_config:
        old = manifest.get("config", {})
        differs = sorted(k for k in {*old, *model_config} if old.get(k) != model_config.get(k))
        raise VlpipeError(
            f"{run.path} holds a run with a different model config "
            f"(captioner {old.get('captioner')!r}, embedder {old.get('embedder')!r}; "
            f"differs in {', '.join(differs)}); "
            "choose another --output or pass --overwrite to replace it"
        )
    elif manifest is None and has_rows:
        raise VlpipeError(
            f"{run.path} holds parts but no manifest.json; pass --overwrite to replace them"
        )
    elif manifest is not None and has_rows and manifest.get("layout_version") != LAYOUT_VERSION:
        raise VlpipeError(
            f"{run.path} was written by an older vlpipe (no done markers); "
            "pass --overwrite to replace it or choose another --output"
        )
    check_writable(run)


def check_writable(run: RunDir) -> None:
    """A write and a delete before any work starts, so that a permanent error (access denied, no
    such bucket, a read-only disk) fails the run at planning, in one line."""
    probe = run.join(f".vlpipe-write-test-{time.time_ns()}")
    try:
        put(run.fs, probe, b"ok")
        run.remove_file(posixpath.basename(probe))
    except StorageError as exc:
        raise VlpipeError(f"cannot write to output {run.path}: {exc}") from None


def clear(run: RunDir) -> None:
    """--overwrite: remove a previous run's outputs (and only vlpipe's own files)."""
    for name in (
        PARTS,
        FAILED,
        *(f.folder for f in beside_parts()),
        INDEX,
        DONE,
        PROGRESS,
        PLAN,
        DEDUP,  # of the rows replaced: the next summary and search --dedup must not read it
    ):
        run.remove(name, nested=True)
    for name in (MANIFEST, SUCCESS):
        run.remove_file(name)


@dataclass
class Resume:
    """The done markers of an output directory, checked against its parts, ready to answer
    "what is left of this spec?" for every spec of a new plan."""

    markers: dict[str, dict]
    corrupt: list[str] = field(default_factory=list)
    _ranges: dict[str, tuple[list, list, list]] = field(default_factory=dict, repr=False)

    @classmethod
    def load(
        cls, run: RunDir, retry_failed: bool = False, filters: Filters | None = None
    ) -> Resume:
        """Markers whose parts are all there; leftovers of interrupted specs are removed.
        `filters`: this run's, so --retry-failed can tell if filtered images need another look."""
        remove_temp_files(run)
        run.remove(PROGRESS)
        markers = run.markers()
        sizes = {sub: run.sizes(sub) for sub in (PARTS, FAILED, *(f.files for f in beside_parts()))}
        resume = cls(markers)
        for marker in markers.values():
            resume._check_parts(run, marker, sizes)
        resume._remove_unreferenced(run, sizes)
        if retry_failed:
            resume._reopen_failures(run, filters or Filters())
        resume._index()
        return resume

    def work(self, spec: ShardSpec) -> ShardWork | None:
        """None when the spec is done; else the spec with the parts that hold some of it."""
        marker = self.markers.get(spec.key)
        if marker and marker["done"] and marker["digest"] == spec.digest:
            return None
        parts: dict[str, None] = {}
        failed: dict[str, None] = {}
        for other in self._overlapping(spec):
            parts.update(dict.fromkeys(other["parts"]))
            failed.update(dict.fromkeys(other["failed_parts"]))
        return ShardWork(spec.without_uris(), tuple(parts), tuple(failed))

    # ---- checks ---------------------------------------------------------------------------

    def _check_parts(self, run: RunDir, marker: dict, sizes: dict[str, dict]) -> None:
        """A marker whose part is gone or torn (size differs) is no longer done: its spec is
        redone, skipping what its intact parts hold, and the torn part is set aside."""
        for sub, names in ((PARTS, marker["parts"]), (FAILED, marker["failed_parts"])):
            for name, size in list(names.items()):
                actual = sizes[sub].get(name)
                if actual is not None and (size is None or size == actual):
                    continue
                marker["done"] = False
                del names[name]
                if actual is not None:
                    self.corrupt.append(_set_aside(run, sub, name))
                    del sizes[sub][name]

    def _remove_unreferenced(self, run: RunDir, sizes: dict[str, dict]) -> None:
        """Parts no marker names come from specs a kill interrupted: they go. Files that are not
        vlpipe parts at all are set aside for a person to look at."""
        beside = {f.files: f.folder for f in beside_parts()}  # a format's files: all vlpipe's
        for sub, key in ((PARTS, "parts"), (FAILED, "failed_parts"), *beside.items()):
            referenced = {n for m in self.markers.values() for n in m.get(key, ())}
            for name in sizes[sub]:
                if name in referenced:
                    continue
                if is_part_name(name) or sub in beside:
                    run.fs.rm(run.join(sub, name))
                else:
                    self.corrupt.append(_set_aside(run, sub, name))

    def _reopen_failures(self, run: RunDir, filters: Filters) -> None:
        """--retry-failed: specs with failures are not done; their failure parts move aside.
        Images the same filters skipped stay skipped: their rows go to a new failure part the
        reopened spec keeps. The marker is rewritten before the parts move, so a kill in
        between leaves a spec to redo, never a loss."""
        folder = posixpath.join(FAILED, f"retried-{time.strftime('%Y%m%dT%H%M%S')}")
        for marker in self.markers.values():
            if not marker["failed_parts"]:
                continue
            names = list(marker["failed_parts"])
            same_filters = marker.get("filters") == filters.describe()
            kept, total = self._filtered_rows(run, names) if same_filters else (None, 0)
            if kept is not None and kept.num_rows == total:
                continue  # only filtered images failed, and the filters are the same
            failed_parts = {}
            if kept is not None and kept.num_rows:
                name = part_name(marker["key"], kept.column("image_id").to_pylist())
                failed_parts[name] = write_table_atomic(run.fs, run.join(FAILED, name), kept)
            marker.update(done=False, failed_parts=failed_parts)
            run.write_marker(marker)
            run.fs.makedirs(run.join(folder), exist_ok=True)
            for name in names:
                run.fs.mv(run.join(FAILED, name), run.join(folder, name))

    @staticmethod
    def _filtered_rows(run: RunDir, names: list[str]) -> tuple:
        """The failure rows with stage filter of these parts (read: --retry-failed reads the
        failure parts, and only those)."""
        import pyarrow as pa
        import pyarrow.compute as pc

        tables = [pf.read() for n in names if (pf := run.open_part(run.join(FAILED, n)))]
        if not tables:
            return None, 0
        table = pa.concat_tables(tables)
        return table.filter(pc.equal(table.column("stage"), STAGE_FILTER)), table.num_rows

    # ---- overlaps -------------------------------------------------------------------------

    def _index(self) -> None:
        by_kind: dict[str, list] = {}
        for marker in self.markers.values():
            by_kind.setdefault(marker["kind"], []).append(marker)
        for kind, markers in by_kind.items():
            markers.sort(key=lambda m: m["first"])
            reach, top = [], ""
            for m in markers:
                top = max(top, m["last"])
                reach.append(top)
            self._ranges[kind] = ([m["first"] for m in markers], reach, markers)

    def _overlapping(self, spec: ShardSpec) -> list[dict]:
        """Markers of the same kind whose range meets the spec's (the spec's own included)."""
        if spec.kind not in self._ranges:
            return []
        firsts, reach, markers = self._ranges[spec.kind]
        out = []
        i = bisect.bisect_right(firsts, spec.last) - 1
        while i >= 0 and reach[i] >= spec.first:
            if markers[i]["last"] >= spec.first:
                out.append(markers[i])
            i -= 1
        return out


def _set_aside(run: RunDir, sub: str, name: str) -> str:
    folder = run.join(sub, CORRUPT)
    run.fs.makedirs(folder, exist_ok=True)
    target = posixpath.join(folder, name)
    run.fs.mv(run.join(sub, name), target)
    return run.fs.unstrip_protocol(target)


def remove_temp_files(run: RunDir) -> None:
    """A run killed mid-write leaves `.tmp-` files (never read as parts); clear them away. Object
    stores get no temp objects (writes go to their final keys), so they need no listing here."""
    if is_object_store(run.fs):
        return
    folders = [PARTS, FAILED, DONE, *(f.files for f in beside_parts())]
    for folder in (run.root, *(run.join(f) for f in folders)):
        for path in listing(run.fs, folder):
            if posixpath.basename(path).startswith(TMP_PREFIX):
                run.fs.rm(path)
