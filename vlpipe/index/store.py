"""The files of an index directory, on any fsspec filesystem.

```
index/
  meta.json                 written last: names the files below, so it is the commit point
  index-<gen>.faiss         the FAISS index; row i of it is row i of the id map
  idmap-<gen>.parquet       image_id, uri, caption per index row; when the run's parts store
                            thumbnails (`--save-thumbnails`), also part and row: the part file
                            and row number of the vector, so a server reads one stored thumbnail
                            without scanning the parts (meta.json says "locations": true);
                            and `text`, the row's alt text (the keyword index's input besides
                            the caption; id maps written before the keyword index lack it)
  tuning-<gen>.npz          tuning queries and their exact top-k (approximate kinds only)
  keyword-<gen>/            BM25 over caption + alt text, document i = id map row i
                            (vlpipe.index.keyword; indexes built before it have none)
```

Every build writes a new generation (a fresh `<gen>`) beside the old one, each file to a temp name
then renamed, then meta.json, then removes the old generation: a reader that opened meta.json
always finds the files it names whole.
"""

from __future__ import annotations

import io
import json
import os
import posixpath
import uuid
from dataclasses import dataclass

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from vlpipe.errors import VlpipeError
from vlpipe.rundir import INDEX, MANIFEST, TMP_PREFIX, write_atomic, write_table_atomic
from vlpipe.storage import is_object_store

META = "meta.json"
FORMAT_VERSION = 1
IDMAP_COLUMNS = ["image_id", "uri", "caption"]
#: where each vector's row lives in the run's parts (runs that store thumbnails only)
LOCATION_COLUMNS = ["part", "row"]
#: the row's alt text, kept for the keyword index (not read by searches)
TEXT_COLUMN = "text"
#: the embedder name of a run made with `--embedder none` (vlpipe.models.registry.NONE)
NO_EMBEDDER = "none"


@dataclass
class IndexDir:
    """An index directory: `fs` and the folder's path on it."""

    fs: fsspec.AbstractFileSystem
    folder: str

    @classmethod
    def of_run(cls, fs: fsspec.AbstractFileSystem, run_root: str) -> IndexDir:
        return cls(fs, posixpath.join(run_root, INDEX))

    @classmethod
    def locate(cls, path: str) -> IndexDir:
        """A run directory (out/) or its index directory (out/index/); one line if neither, or
        if the run is captions-only (an index left there from before is not of this run)."""
        fs, root = fsspec.core.url_to_fs(path)
        root = root.rstrip("/") or "/"
        refuse_captions_only(fs, root, path, "search")
        for folder in (root, posixpath.join(root, INDEX)):
            if fs.exists(posixpath.join(folder, META)):
                return cls(fs, folder)
        if not fs.exists(root):
            raise VlpipeError(f"no index at {path}: the path does not exist")
        raise VlpipeError(f"no index at {path}: build one with `vlpipe index <run dir>`")

    def join(self, name: str) -> str:
        return posixpath.join(self.folder, name)

    @property
    def run_root(self) -> str:
        """The run directory this index belongs to: the one place that maps an index folder to
        its run (the run's parts, dedup clusters and manifest sit beside index/)."""
        return posixpath.dirname(self.folder)

    def run_path(self, *names: str) -> str:
        """A path inside the run directory, e.g. `run_path(PARTS)`."""
        return posixpath.join(self.run_root, *names)

    @property
    def is_local(self) -> bool:
        return "file" in _protocols(self.fs)

    def read_meta(self) -> dict | None:
        """meta.json, None when absent; one line when it is unreadable."""
        path = self.join(META)
        if not self.fs.exists(path):
            return None
        try:
            with self.fs.open(path, "rb") as f:
                meta = json.load(f)
            if not isinstance(meta, dict) or "files" not in meta or "count" not in meta:
                raise ValueError("missing keys")
        except (ValueError, UnicodeDecodeError) as exc:
            raise VlpipeError(
                f"corrupt index metadata {self.fs.unstrip_protocol(path)}: {exc}"
            ) from None
        return meta

    # ---- reading -------------------------------------------------------------------------------

    def read_index(self, meta: dict):
        """The FAISS index meta.json names; one line when missing or unreadable."""
        import faiss

        path = self.join(meta["files"]["index"])
        try:
            if self.is_local:
                index = faiss.read_index(path)
            else:
                index = faiss.deserialize_index(np.frombuffer(self.fs.cat_file(path), np.uint8))
        except (RuntimeError, OSError, FileNotFoundError) as exc:
            reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
            raise VlpipeError(
                f"corrupt or missing index file {self.fs.unstrip_protocol(path)}: {reason}; "
                "rebuild it with `vlpipe index <run dir> --rebuild`"
            ) from None
        if index.ntotal != meta["count"] or index.d != meta["dim"]:
            raise VlpipeError(
                f"corrupt index {self.folder}: the index file holds {index.ntotal} vectors of "
                f"dimension {index.d}, meta.json says {meta['count']} of {meta['dim']}"
            )
        return index

    def read_idmap(self, meta: dict, columns: list[str] | None = None) -> pa.Table:
        path = self.join(meta["files"]["idmap"])
        columns = columns or IDMAP_COLUMNS
        try:
            if self.is_local:  # memory-mapped: no copy through a Python file object
                table = pq.read_table(path, columns=columns, memory_map=True)
            else:
                with self.fs.open(path, "rb") as f:
                    table = pq.read_table(f, columns=columns)
        except (OSError, pa.ArrowException) as exc:
            raise VlpipeError(
                f"corrupt or missing id map {self.fs.unstrip_protocol(path)}: {exc}"
            ) from None
        table = table.combine_chunks()  # take() on many chunks costs O(rows): 17 ms at 1M
        if table.num_rows != meta["count"]:
            raise VlpipeError(
                f"corrupt index {self.folder}: id map has {table.num_rows} rows, "
                f"the index {meta['count']}"
            )
        return table

    def read_keyword(self, meta: dict):
        """The keyword index (vlpipe.index.keyword.KeywordIndex) meta.json names, None for an
        index built without one; one line when it is missing or unreadable."""
        name = meta["files"].get("keyword")
        if not name:
            return None
        from vlpipe.index.keyword import KeywordIndex

        path = self.join(name)
        try:
            return KeywordIndex.load(self.fs, path, self.is_local, meta["count"])
        except (OSError, ValueError, KeyError) as exc:
            raise VlpipeError(
                f"corrupt or missing keyword index {self.fs.unstrip_protocol(path)}: {exc}; "
                "rebuild it with `vlpipe index <run dir> --rebuild`"
            ) from None

    def read_tuning(self, meta: dict) -> dict[str, np.ndarray] | None:
        name = meta["files"].get("tuning")
        if not name or not self.fs.exists(self.join(name)):
            return None
        with np.load(io.BytesIO(self.fs.cat_file(self.join(name))), allow_pickle=False) as data:
            return {key: data[key] for key in data.files}

    # ---- writing -------------------------------------------------------------------------------

    def write(
        self,
        index,
        idmap: pa.Table,
        tuning: dict[str, np.ndarray] | None,
        meta: dict,
        keyword=None,
    ) -> dict:
        """Write a new generation, then meta.json naming it, then drop older generations.
        `keyword` is a vlpipe.index.keyword.KeywordIndex over the same rows as `idmap`."""
        gen = uuid.uuid4().hex[:12]
        files = {"index": f"index-{gen}.faiss", "idmap": f"idmap-{gen}.parquet"}
        if not is_object_store(self.fs):  # object stores have no folders to make
            self.fs.makedirs(self.folder, exist_ok=True)
        self._write_faiss(index, self.join(files["index"]))
        write_table_atomic(self.fs, self.join(files["idmap"]), idmap)
        if keyword is not None:
            files["keyword"] = f"keyword-{gen}"
            keyword.save(self.fs, self.join(files["keyword"]), self.is_local)
            meta = {**meta, "keyword": keyword.describe()}
        if tuning is not None:
            files["tuning"] = f"tuning-{gen}.npz"
            buf = io.BytesIO()
            np.savez(buf, **tuning)
            write_atomic(self.fs, self.join(files["tuning"]), buf.getvalue())
        meta = {**meta, "format": FORMAT_VERSION, "files": files}
        write_atomic(self.fs, self.join(META), json.dumps(meta, indent=2).encode())
        self._drop_other_generations(set(files.values()))
        return meta

    def _write_faiss(self, index, path: str) -> None:
        import faiss

        if self.is_local:  # straight to disk: no second copy of a large index in memory
            tmp = self.join(TMP_PREFIX + posixpath.basename(path))
            faiss.write_index(index, tmp)
            os.replace(tmp, path)
        else:  # faiss writes local files only: serialise to bytes for remote filesystems
            write_atomic(self.fs, path, faiss.serialize_index(index).tobytes())

    def _drop_other_generations(self, keep: set[str]) -> None:
        for path in self.fs.ls(self.folder, detail=False):
            name = posixpath.basename(path)
            if name.startswith(("index-", "idmap-", "tuning-", "keyword-")) and name not in keep:
                self.fs.rm(path, recursive=True)  # keyword-<gen> is a folder


def captions_only(manifest: dict) -> bool:
    """Whether a run's manifest.json is of a run made without embeddings (`--embedder none`)."""
    if not isinstance(manifest, dict):
        return False
    mode = manifest.get("mode")
    if isinstance(mode, dict) and mode.get("embeddings") is False:
        return True
    models = manifest.get("models")
    embedder = models.get("embedder") if isinstance(models, dict) else None
    return isinstance(embedder, dict) and embedder.get("name") == NO_EMBEDDER


def captions_only_error(path: str, verb: str = "index") -> VlpipeError:
    return VlpipeError(
        f"{path} is a captions-only run (--embedder none): it has no embeddings to {verb}"
    )


def refuse_captions_only(fs: fsspec.AbstractFileSystem, root: str, path: str, verb: str) -> None:
    """One line when `root` holds a captions-only run; any other folder passes (the caller
    says what is wrong with it, if anything)."""
    try:
        manifest = json.loads(fs.cat_file(posixpath.join(root, MANIFEST)))
    except (OSError, ValueError):  # absent, unreadable or not JSON: not this check's business
        return
    if captions_only(manifest):
        raise captions_only_error(path, verb)


def _protocols(fs: fsspec.AbstractFileSystem) -> tuple[str, ...]:
    proto = fs.protocol
    return (proto,) if isinstance(proto, str) else tuple(proto)
