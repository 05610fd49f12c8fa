"""The layout of a run's output directory, on any fsspec filesystem.

```
out/
  manifest.json        models and their config, schema version, counts, times, vlpipe version
  _SUCCESS             written last, when every input is accounted for
  parts/part-*.parquet rows per vlpipe.schema.result_schema, one part per shard-size inputs
  failed/part-*.parquet rows per vlpipe.schema.FAILED_SCHEMA
  wds/part-*.tar       with --output-format webdataset: one tar shard beside each part
  _done/<key>.json     one marker per finished shard spec: its counts and the parts it wrote
  _progress/<key>.json how far a worker is into a spec it has not finished (progress only)
  _plan/<key>.jsonl    the uris of a listing page a worker is to process
  index/               FAISS index, id map and meta.json (vlpipe.index)
  dedup/               clusters.parquet, summary.json, report.html, state/ (vlpipe.dedup)
```

Markers are written after their parts, so a spec with a marker is done, and a part no marker
names is the leftover of an interrupted spec. Readers here tolerate a corrupt part: they skip it
and report it, so one bad file never takes down an index build or a resume.
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
TMP_PREFIX = ".tmp-"


@dataclass
class RunDir:
    """A run's output directory; `path` may be a local path or any fsspec URL."""

    path: str
    fs: fsspec.AbstractFileSystem = field(init=False, repr=False)
    root: str = field(init=False)
    corrupt: list[str] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        self.fs, self.root = fsspec.core.url_to_fs(self.path)
        self.root = self.root.rstrip("/") or "/"

    def join(self, *names: str) -> str:
        return posixpath.join(self.root, *names)

    def url(self, *names: str) -> str:
        """A path under this directory as a URL another process can open with fsspec."""
        return self.fs.unstrip_protocol(self.join(*names))

    def exists(self) -> bool:
        return self.fs.exists(self.root)

    def _list(self, sub: str) -> list[str]:
        folder = self.join(sub)
        # Object stores' filesystems cache listings; other processes (workers) add parts.
        self.fs.invalidate_cache(folder)
        if not self.fs.exists(folder):
            return []
        names = self.fs.ls(folder, detail=False)
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
        name = self.join(MANIFEST)
        if not self.fs.exists(name):
            return None
        with self.fs.open(name, "r") as f:
            return json.load(f)

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
        write_atomic(self.fs, self.join(MANIFEST), json.dumps(manifest, indent=2).encode())

    def is_complete(self) -> bool:
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
        blobs = self.fs.cat(paths, on_error="omit") if len(paths) > 1 else self._cat_one(paths[0])
        out = {}
        for blob in blobs.values():
            try:
                marker = json.loads(blob)
            except ValueError:
                continue  # markers are written atomically; this is not one of ours
            out[marker["key"]] = marker
        return out

    def _cat_one(self, path: str) -> dict[str, bytes]:
        try:
            return {path: self.fs.cat_file(path)}
        except FileNotFoundError:
            return {}

    def write_marker(self, marker: dict) -> None:
        write_atomic(self.fs, self.join(DONE, f"{marker['key']}.json"), json.dumps(marker).encode())

    def write_progress(self, key: str, seen: int) -> None:
        write_atomic(self.fs, self.join(PROGRESS, f"{key}.json"), json.dumps(seen).encode())

    def progress(self) -> dict[str, int]:
        """Inputs seen so far by each spec a worker is in the middle of."""
        names = [n for n in self._names(PROGRESS) if n.endswith(".json")]
        if not names:
            return {}
        blobs = self.fs.cat([self.join(PROGRESS, n) for n in names], on_error="omit")
        out = {}
        for path, blob in blobs.items():
            try:
                out[posixpath.basename(path)[: -len(".json")]] = int(json.loads(blob))
            except (ValueError, TypeError):
                continue
        return out

    def remove(self, *names: str) -> None:
        path = self.join(*names)
        if self.fs.exists(path):
            self.fs.rm(path, recursive=True)

    def sizes(self, sub: str) -> dict[str, int]:
        """Part file names and sizes in parts/ or failed/, from one listing."""
        folder = self.join(sub)
        self.fs.invalidate_cache(folder)
        if not self.fs.exists(folder):
            return {}
        out = {}
        for info in self.fs.ls(folder, detail=True):
            name = posixpath.basename(info["name"].rstrip("/"))
            if info.get("type") == "file" and not name.startswith(TMP_PREFIX):
                out[name] = int(info.get("size") or 0)
        return out

    def _names(self, sub: str) -> list[str]:
        folder = self.join(sub)
        self.fs.invalidate_cache(folder)
        if not self.fs.exists(folder):
            return []
        return [posixpath.basename(n.rstrip("/")) for n in self.fs.ls(folder, detail=False)]

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
    """Write to a temp name beside `path`, then rename, so readers never see half a file.
    Returns the size written (callers record it without asking the filesystem again)."""
    folder, name = posixpath.split(path)
    tmp = posixpath.join(folder, f"{TMP_PREFIX}{name}")
    fs.makedirs(folder, exist_ok=True)
    with fs.open(tmp, "wb") as f:
        f.write(data)
    fs.mv(tmp, path)
    return len(data)


def write_table_atomic(fs: fsspec.AbstractFileSystem, path: str, table: pa.Table) -> int:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    return write_atomic(fs, path, sink.getvalue().to_pybytes())
