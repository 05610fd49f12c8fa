"""The layout of a run's output directory, on any fsspec filesystem.

```
out/
  manifest.json        models and their config, schema version, counts, times, vlpipe version
  _SUCCESS             written last, when every input is accounted for
  parts/part-*.parquet rows per vlpipe.schema.result_schema, one part per shard-size inputs
  failed/part-*.parquet rows per vlpipe.schema.FAILED_SCHEMA
  wds/part-*.tar       with --output-format webdataset: one tar shard beside each part
  _done/<key>.json     one marker per finished shard spec: its counts and the parts it wrote
  _progress/<worker>.json  how many inputs each worker has seen so far (progress only)
  _lease.json          the run that holds this output now: holder, host, heartbeat
  _plan/<key>.jsonl    the uris of a listing page a worker is to process
  index/               FAISS index, id map and meta.json (vlpipe.index)
  dedup/               clusters.parquet, summary.json, report.html, state/ (vlpipe.dedup)
```

Markers are written after their parts, so a spec with a marker is done, and a part no marker
names is the leftover of an interrupted spec. Every file is written whole or not at all
(vlpipe.storage.put: one PUT on object stores, a temp file and a rename elsewhere). Readers here
tolerate a corrupt part: they skip it and report it, so one bad file never takes down an index
build or a resume.
"""

from __future__ import annotations

import json
import logging
import posixpath
from collections.abc import Iterator
from dataclasses import dataclass, field

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from vlpipe.errors import VlpipeError
from vlpipe.storage import (
    TMP_PREFIX,
    is_object_store,
    listing,
    output_fs,
    put,
    reporting,
    small_read_options,
    storage_error,
)

__all__ = [
    "CLUSTERS",
    "DEDUP",
    "DONE",
    "FAILED",
    "INDEX",
    "LEASE",
    "MANIFEST",
    "PARTS",
    "PLAN",
    "PROGRESS",
    "SUCCESS",
    "WDS",
    "RunDir",
    "write_atomic",
    "write_table_atomic",
]

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
SUCCESS = "_SUCCESS"
PARTS = "parts"
FAILED = "failed"
INDEX = "index"
DEDUP = "dedup"
CLUSTERS = "dedup/clusters.parquet"  # read by search (collapse) and serve
WDS = "wds"
DONE = "_done"
PROGRESS = "_progress"
PLAN = "_plan"
LEASE = "_lease.json"


@dataclass
class RunDir:
    """A run's output directory; `path` may be a local path or any fsspec URL. `private`: a
    filesystem instance of its own (the driver's poller), never one a writer shares."""

    path: str
    private: bool = False
    fs: fsspec.AbstractFileSystem = field(init=False, repr=False)
    root: str = field(init=False)
    corrupt: list[str] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        self.fs, self.root = output_fs(self.path, private=self.private)
        self.root = self.root.rstrip("/") or "/"

    def join(self, *names: str) -> str:
        return posixpath.join(self.root, *names)

    def url(self, *names: str) -> str:
        """A path under this directory as a URL another process can open with fsspec."""
        return self.fs.unstrip_protocol(self.join(*names))

    def exists(self) -> bool:
        with reporting("check", self.fs, self.root):
            return self.fs.exists(self.root)

    def _list(self, sub: str) -> list[str]:
        names = listing(self.fs, self.join(sub))
        return sorted(
            n
            for n in names
            if n.endswith(".parquet") and not posixpath.basename(n).startswith(TMP_PREFIX)
        )

    def parts(self) -> list[str]:
        return self._list(PARTS)

    def failed_parts(self) -> list[str]:
        return self._list(FAILED)

    def read_manifest(self) -> dict | None:
        blob = self.read(MANIFEST)
        return None if blob is None else json.loads(blob)

    def read(self, *names: str) -> bytes | None:
        """A small file's bytes, or None if it is not there (one GET)."""
        path = self.join(*names)
        with reporting("read", self.fs, path):
            try:
                return self.fs.cat_file(path, **small_read_options(self.fs))
            except FileNotFoundError:
                return None

    def require_manifest(self) -> dict:
        """manifest.json, or a one-line VlpipeError saying why this is not a run to read."""
        if not self.exists():
            raise VlpipeError(f"no run directory at {self.path}")
        try:
            manifest = self.read_manifest()
        except ValueError as exc:
            raise VlpipeError(f"corrupt manifest.json in {self.path}: {exc}") from None
        if manifest is None:
            raise VlpipeError(f"{self.path} has no manifest.json: not a vlpipe run directory")
        return manifest

    def write_manifest(self, manifest: dict) -> None:
        put(self.fs, self.join(MANIFEST), json.dumps(manifest, indent=2).encode())

    def is_complete(self) -> bool:
        with reporting("check", self.fs, self.join(SUCCESS)):
            return self.fs.exists(self.join(SUCCESS))

    def open_part(self, path: str) -> pq.ParquetFile | None:
        """A part's ParquetFile, or None (and a warning, and a note in `corrupt`) if unreadable."""
        try:
            return pq.ParquetFile(self.fs.open(path, "rb"))
        except Exception as exc:  # noqa: BLE001 - any unreadable part is reported, not fatal
            log.warning("skipping corrupt part %s: %s", path, exc)
            self.corrupt.append(path)
            return None

    def iter_batches(
        self, columns: list[str], failed: bool = False, batch_size: int = 65536
    ) -> Iterator[pa.RecordBatch]:
        """Record batches of `columns` from every readable part, in part order, bounded memory."""
        for path in self.failed_parts() if failed else self.parts():
            yield from self.iter_part_batches(path, columns, batch_size)

    def iter_part_batches(
        self, path: str, columns: list[str], batch_size: int = 65536
    ) -> Iterator[pa.RecordBatch]:
        """One part's record batches; a part that is or turns out corrupt is skipped, noted in
        `corrupt` and logged (the batches it gave before breaking have been yielded)."""
        pf = self.open_part(path)
        if pf is None:
            return
        try:
            yield from pf.iter_batches(batch_size=batch_size, columns=columns)
        except Exception as exc:  # noqa: BLE001 - any unreadable part is reported, not fatal
            log.warning("skipping corrupt part %s: %s", path, exc)
            self.corrupt.append(path)

    # ---- done markers, progress and plan pages ------------------------------------------------

    def markers(self) -> dict[str, dict]:
        """Every done marker by spec key; one listing and one batched read (O(shards))."""
        return self.read_markers(self.marker_keys())

    def marker_keys(self) -> list[str]:
        return [n[: -len(".json")] for n in self._names(DONE) if n.endswith(".json")]

    def read_markers(self, keys: list[str]) -> dict[str, dict]:
        if not keys:
            return {}
        paths = [self.join(DONE, f"{k}.json") for k in keys]
        blobs = self._cat(paths)
        out = {}
        for blob in blobs.values():
            try:
                marker = json.loads(blob)
            except ValueError:
                continue  # markers are written atomically; this is not one of ours
            out[marker["key"]] = marker
        return out

    def _cat(self, paths: list[str]) -> dict[str, bytes]:
        """The bytes of these small files (concurrent GETs); files that are gone are left out,
        any other error is raised."""
        out = {}
        with reporting("read", self.fs, paths[0]):
            if len(paths) == 1:
                blobs = [self._cat_one(paths[0])]
            else:  # concurrent GETs, one per file (fs.cat would first HEAD each one)
                options = small_read_options(self.fs)
                blobs = self.fs.cat_ranges(paths, None, None, on_error="return", **options)
            for path, blob in zip(paths, blobs, strict=True):
                if isinstance(blob, FileNotFoundError):
                    continue
                if isinstance(blob, BaseException):
                    raise storage_error("read", self.fs, path, blob) from blob
                out[path] = blob
        return out

    def _cat_one(self, path: str) -> bytes | FileNotFoundError:
        try:
            return self.fs.cat_file(path, **small_read_options(self.fs))
        except FileNotFoundError as exc:
            return exc

    def write_marker(self, marker: dict) -> None:
        put(self.fs, self.join(DONE, f"{marker['key']}.json"), json.dumps(marker).encode())

    def write_progress(self, worker: str, state: dict) -> None:
        """One object per worker (never per spec), so a poll costs a listing and a read per
        worker however many specs the run has."""
        put(self.fs, self.join(PROGRESS, f"{worker}.json"), json.dumps(state).encode())

    def progress(self, workers: list[str] | None = None) -> dict[str, dict]:
        """Each worker's progress object (see write_progress), by worker: those of `workers`
        (one GET each), or of every worker (a listing first)."""
        if workers is None:
            workers = [n[: -len(".json")] for n in self._names(PROGRESS) if n.endswith(".json")]
        if not workers:
            return {}
        paths = [self.join(PROGRESS, f"{w}.json") for w in workers]
        out = {}
        for path, blob in self._cat(paths).items():
            try:
                state = json.loads(blob)
            except ValueError:
                continue
            if isinstance(state, dict):
                out[posixpath.basename(path)[: -len(".json")]] = state
        return out

    def remove(self, *names: str, nested: bool = False) -> None:
        """A folder and all it holds (on object stores: one listing and one batched delete;
        `nested`: the folder has folders of its own, so the listing walks them)."""
        path = self.join(*names)
        with reporting("remove", self.fs, path):
            if not is_object_store(self.fs):
                if self.fs.exists(path):
                    self.fs.rm(path, recursive=True)
                return
            if nested:
                found = self.fs.find(path, withdirs=False)
            else:
                found = [e["name"] for e in listing(self.fs, path, detail=True)
                         if e.get("type") == "file"]  # fmt: skip
            if found:
                self.fs.rm(found)

    def remove_file(self, *names: str) -> None:
        """One file, one DELETE (no listing); nothing to do if it is not there."""
        path = self.join(*names)
        with reporting("remove", self.fs, path):
            try:
                self.fs.rm_file(path)
            except FileNotFoundError:
                pass

    def sizes(self, sub: str) -> dict[str, int]:
        """Part file names and sizes in parts/ or failed/, from one listing."""
        out = {}
        for info in listing(self.fs, self.join(sub), detail=True):
            name = posixpath.basename(info["name"].rstrip("/"))
            if info.get("type") == "file" and not name.startswith(TMP_PREFIX):
                out[name] = int(info.get("size") or 0)
        return out

    def _names(self, sub: str) -> list[str]:
        return [posixpath.basename(n.rstrip("/")) for n in listing(self.fs, self.join(sub))]

    def part_ids(self, names: list[str], failed: bool = False) -> set[str]:
        """The image ids held by the named parts (a spec's own few, never the whole run)."""
        ids: set[str] = set()
        for name in names:
            pf = self.open_part(self.join(FAILED if failed else PARTS, name))
            if pf is not None:
                ids.update(pf.read(columns=["image_id"]).column(0).to_pylist())
        return ids

    def image_ids(self, failed: bool = False) -> set[str]:
        """Ids of every part read in full: a part that breaks halfway counts as corrupt, none of
        its ids as done (resume sets it aside and processes all of them again)."""
        ids: set[str] = set()
        for path in self.failed_parts() if failed else self.parts():
            pf = self.open_part(path)
            if pf is None:
                continue
            try:
                part = pf.read(columns=["image_id"]).column(0).to_pylist()
            except Exception as exc:  # noqa: BLE001
                log.warning("skipping corrupt part %s: %s", path, exc)
                self.corrupt.append(path)
                continue
            ids.update(part)
        return ids


def write_atomic(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> int:
    """Readers never see half a file (see vlpipe.storage.put). Returns the size written, which
    callers record without asking the filesystem again."""
    return put(fs, path, data)


def write_table_atomic(fs: fsspec.AbstractFileSystem, path: str, table: pa.Table) -> int:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    return write_atomic(fs, path, sink.getvalue().to_pybytes())
