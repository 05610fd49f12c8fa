"""WebDataset tar shards beside the Parquet parts (`--output-format webdataset`).

Why: training code reads WebDataset (sequential tar reads, no random access, no Parquet
dependency), so each result part also gets `wds/<part>.tar` holding per row the source image
bytes, the caption, the row as JSON and the embedding as .npy. The Parquet parts stay the
source of truth (resume, index, search read only those); a shard is derived output, written
whole or not at all and byte-identical for the same rows, so a Beam retry of a part rewrites the
same shard. Its name is known only when the part ends, so it streams to a temp file first: beside
it on a local disk (then renamed), on the worker's own disk for an object store (then uploaded
to its final key in one request: object stores have no rename, only a copy and a delete).

The image bytes go through the export policy (vlpipe.images.export) on their way in: by default
the location, camera serial and other metadata are stripped losslessly (pixels untouched,
orientation kept), `--keep-metadata` keeps the bytes as read, `--blur-faces` blurs the row's
face boxes. The sample's .json records what was done (`export_metadata`) and the hash of the
bytes in the tar (`export_sha256`; the row's `sha256` stays the hash of the bytes read).
The worker feeds every format that copies image bytes through that policy (images/export.py,
`exported`); this writer applies it itself to rows that have not been through it (curate).
"""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import posixpath
import tarfile
import tempfile
import uuid
from decimal import Decimal
from typing import IO, Any

import fsspec
import numpy as np
import pyarrow as pa

from vlpipe.images.export import ExportPolicy, exported
from vlpipe.outputs.base import OutputFormat, PartWriter
from vlpipe.rundir import RunDir
from vlpipe.storage import TMP_PREFIX, is_object_store, reporting

#: the run's folder of tar shards, one beside each result part
FOLDER = "wds"

#: file extension of a sample's image by the row's `format` (Pillow's name); others get "img"
EXTENSIONS = {
    "JPEG": "jpg",
    "PNG": "png",
    "WEBP": "webp",
    "GIF": "gif",
    "BMP": "bmp",
    "TIFF": "tiff",
    "AVIF": "avif",
}
#: columns not copied into a sample's .json (the embedding has its own .npy; bytes are skipped)
NOT_IN_JSON = frozenset({"embedding", "thumbnail"})


def image_extension(fmt: str | None) -> str:
    return EXTENSIONS.get((fmt or "").upper(), "img")


def jsonable(value: Any) -> Any:
    """A row value as plain JSON types: numpy/arrow scalars unwrapped, dates as ISO strings."""
    if isinstance(value, pa.Scalar):
        value = value.as_py()
    if isinstance(value, np.datetime64):
        return str(np.datetime_as_string(value))
    if isinstance(value, np.generic | np.ndarray):
        value = value.tolist()
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if _is_bytes(value):
        return None  # nested binary (top-level binary columns are left out of the JSON)
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items() if not _is_bytes(v)}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(v) for v in value]
    return str(value)  # an exotic user value must not fail the shard


def row_json(row: dict) -> bytes:
    out = {k: jsonable(v) for k, v in row.items() if k not in NOT_IN_JSON and not _is_bytes(v)}
    return json.dumps(out, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def embedding_npy(embedding: Any) -> bytes:
    """The embedding as .npy, keeping float16/float32 as stored (a plain list becomes float32)."""
    if isinstance(embedding, pa.ListScalar | pa.FixedSizeListScalar):
        embedding = embedding.values.to_numpy(zero_copy_only=False)
    arr = np.asarray(embedding)
    if arr.dtype not in (np.float16, np.float32):
        arr = arr.astype(np.float32)
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def _unwrap(name: str, value: Any) -> Any:
    """Arrow scalars (a row taken from a table) as Python values; a valid embedding stays an
    Arrow list so embedding_npy keeps its float16/float32 type."""
    if not isinstance(value, pa.Scalar):
        return value
    if name == "embedding" and value.is_valid:
        return value
    return value.as_py()


def _is_bytes(value: Any) -> bool:
    return isinstance(value, bytes | bytearray | memoryview)


class WdsWriter:
    """Streams samples into one tar shard: memory holds one sample, never the shard."""

    def __init__(
        self, fs: fsspec.AbstractFileSystem, path: str, policy: ExportPolicy | None = None
    ):
        self.fs = fs
        self.path = path
        self.policy = policy or ExportPolicy()  # metadata stripped unless asked to keep it
        folder, name = posixpath.split(path)
        self.folder = folder
        self.tmp = posixpath.join(folder, f"{TMP_PREFIX}{name}")
        self.count = 0
        self._file: IO[bytes] | None = None
        self._tar: tarfile.TarFile | None = None
        self._spool: str | None = None  # the local temp file (object stores)
        self._done = False

    def add(self, row: dict, image: bytes) -> None:
        """One sample keyed by the row's image_id: image (as the export policy has it), caption,
        row JSON, embedding."""
        if self._done:
            raise ValueError(f"{self.path}: writer is closed")
        row = {k: _unwrap(k, v) for k, v in row.items()}
        key = str(row["image_id"])
        if not key or "/" in key or "." in key:
            raise ValueError(f"image_id {key!r} cannot be a WebDataset key")
        if "export_sha256" not in row:  # not yet through the export policy (vlpipe curate)
            row, image = exported(row, image, self.policy)
        members = [(f"{key}.{image_extension(row['export_format'])}", bytes(image))]
        if row.get("caption") is not None:
            members.append((f"{key}.txt", str(row["caption"]).encode("utf-8")))
        members.append((f"{key}.json", row_json(row)))
        if row.get("embedding") is not None:
            members.append((f"{key}.npy", embedding_npy(row["embedding"])))
        tar = self._open()
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
        self.count += 1

    def close(self) -> int:
        """Finish the shard and move it to its final name; its size (0, and no file, if empty)."""
        if self._done:
            raise ValueError(f"{self.path}: writer is closed")
        if self._tar is None:
            self._done = True
            return 0
        try:
            self._finish()
            with reporting("write", self.fs, self.path):
                if self._spool is None:
                    self.fs.mv(self.tmp, self.path)
                    return self.fs.size(self.path)
                self.fs.put_file(self._spool, self.path)
                return os.path.getsize(self._spool)
        except BaseException:
            self.abort()
            raise
        finally:
            self._drop_spool()

    def abort(self) -> None:
        """Drop the shard: the temp file is removed, the final name never written."""
        self._done = True
        try:
            self._finish()
        except Exception:  # noqa: BLE001 - the file is being thrown away anyway
            pass
        if self._spool is not None:
            self._drop_spool()
        elif self.fs.exists(self.tmp):
            self.fs.rm(self.tmp)

    def _drop_spool(self) -> None:
        if self._spool is not None and os.path.exists(self._spool):
            os.remove(self._spool)

    def _open(self) -> tarfile.TarFile:
        if self._tar is None:
            if is_object_store(self.fs):
                fd, self._spool = tempfile.mkstemp(prefix="vlpipe-wds-", suffix=".tar")
                self._file = os.fdopen(fd, "wb")
            else:
                if self.folder:
                    self.fs.makedirs(self.folder, exist_ok=True)
                self._file = self.fs.open(self.tmp, "wb")
            self._tar = tarfile.open(fileobj=self._file, mode="w|", format=tarfile.PAX_FORMAT)
        return self._tar

    def _finish(self) -> None:
        self._done = True
        tar, file, self._tar, self._file = self._tar, self._file, None, None
        try:
            if tar is not None:
                tar.close()
        finally:
            if file is not None:
                file.close()


class WdsPartWriter(PartWriter):
    """A part's tar, streamed under a provisional name while the part fills (its final name,
    made of the part's ids, is known only at close), then renamed beside the part."""

    def __init__(self, run: RunDir, key: str):
        self.run = run
        self._tar = WdsWriter(run.fs, run.join(FOLDER, f"{key}-{uuid.uuid4().hex[:12]}.tar"))

    def add(self, row: dict, image: bytes | None) -> None:
        self._tar.add(row, image)

    def close(self, part: str, table: pa.Table) -> dict[str, int]:
        self._tar.path = self.run.join(FOLDER, f"{part}.tar")
        size = self._tar.close()
        return {f"{part}.tar": size} if size else {}

    def abort(self) -> None:
        self._tar.abort()


WEBDATASET = OutputFormat(
    name="webdataset",
    help="also tar shards (image, .txt, .json, .npy) in OUT/wds, one beside each part",
    folder=FOLDER,
    files=FOLDER,
    needs_image_bytes=True,
    open=WdsPartWriter,
)


__all__ = ["WEBDATASET", "WdsWriter", "embedding_npy", "image_extension", "jsonable", "row_json"]
