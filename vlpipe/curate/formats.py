"""What `vlpipe curate --format` writes, one class per format (FORMATS):

- `parquet`: SUBSET/manifest.parquet with `url` (the row's uri), `caption` (the source's text
  where it had one, else vlpipe's caption) and the user's own columns: a manifest `vlpipe run`
  reads as is (url and caption are its uri and text columns) and img2dataset reads with
  `--url_col url --caption_col caption`. Row groups of --shard-size rows (a run plans one or
  more shards per row group): kept rows wait in memory until a row group is full, so memory
  holds at most --shard-size of them. vlpipe's own columns stay out: a run computes them again.
- `webdataset`: SUBSET/NNNNN.tar shards of --shard-size samples, each the source image's bytes,
  caption, row JSON and embedding, written by the same writer as `vlpipe run --output-format
  webdataset` (so the same export policy: metadata stripped unless --keep-metadata, faces
  blurred with --blur-faces); a source that cannot be read is counted and listed, never
  silently dropped.

Both stream: one batch of rows, and for WebDataset one shard's open tar, at a time.
"""

from __future__ import annotations

import posixpath
from concurrent.futures import ThreadPoolExecutor

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from vlpipe.images.export import ExportPolicy
from vlpipe.outputs.webdataset import WdsWriter
from vlpipe.reading.sources import read_source
from vlpipe.rundir import TMP_PREFIX
from vlpipe.schema import RESERVED_COLUMNS

MANIFEST = "manifest.parquet"
MAX_SOURCE_BYTES = 256 * 2**20
READERS = 8


class ParquetManifest:
    """Streams the kept rows' url, caption and user columns into one Parquet file."""

    name = "parquet"

    def __init__(self, fs, folder: str, shard_size: int, user_columns: list[str],
                 policy: ExportPolicy | None = None):  # fmt: skip
        # `policy` is for formats that copy image bytes: a manifest copies none
        self.fs, self.shard_size, self.user = fs, shard_size, user_columns
        self.path = posixpath.join(folder, MANIFEST)
        self.tmp = posixpath.join(folder, TMP_PREFIX + MANIFEST)
        self.writer: pq.ParquetWriter | None = None
        self.file = None
        self.rows = 0
        self.unreadable: list[tuple[str, str]] = []
        self.pending: list[pa.Table] = []  # kept rows not yet written: under shard_size of them
        self.pending_rows = 0
        self.closing = False

    @staticmethod
    def columns(user_columns: list[str]) -> list[str]:
        return ["uri", "text", "caption", *user_columns]

    def add(self, kept: pa.Table) -> None:
        caption = pc.coalesce(kept.column("text"), kept.column("caption"))
        table = pa.table(
            {"url": kept.column("uri"), "caption": caption,
             **{c: kept.column(c) for c in self.user}}
        )  # fmt: skip
        self.pending.append(table)
        self.pending_rows += table.num_rows
        self.rows += table.num_rows
        if self.pending_rows >= self.shard_size:
            self._flush()

    def _flush(self) -> None:
        """Whole row groups of shard_size rows (the rest waits for more rows, or close)."""
        table = pa.concat_tables(self.pending, promote_options="permissive")
        if self.writer is None:
            self.file = self.fs.open(self.tmp, "wb")
            self.writer = pq.ParquetWriter(self.file, table.schema, compression="zstd")
        full = table.num_rows - table.num_rows % self.shard_size if not self.closing else None
        head = table if full is None else table.slice(0, full)
        self.writer.write_table(head.cast(self.writer.schema), row_group_size=self.shard_size)
        rest = table.slice(head.num_rows)
        self.pending, self.pending_rows = ([rest], rest.num_rows) if rest.num_rows else ([], 0)

    def close(self) -> list[str]:
        self.closing = True
        if self.writer is None and not self.pending:  # no row kept: an empty manifest says so
            self.add(pa.table({"uri": pa.array([], pa.string()), "text": pa.array([], pa.string()),
                               "caption": pa.array([], pa.string()),
                               **{c: pa.array([]) for c in self.user}}))  # fmt: skip
        if self.pending or self.writer is None:
            self._flush()
        self.writer.close()
        self.file.close()
        self.fs.mv(self.tmp, self.path)
        return [self.path]


class WebDatasetShards:
    """Streams the kept rows with their source images into tars of shard_size samples."""

    name = "webdataset"

    def __init__(self, fs, folder: str, shard_size: int, user_columns: list[str],
                 policy: ExportPolicy | None = None):  # fmt: skip
        self.fs, self.folder, self.shard_size = fs, folder, shard_size
        self.policy = policy or ExportPolicy()
        self.writer: WdsWriter | None = None
        self.shards: list[str] = []
        self.rows = 0
        self.unreadable: list[tuple[str, str]] = []  # (uri, why)

    @staticmethod
    def columns(user_columns: list[str]) -> list[str] | None:
        return None  # every column: the row JSON holds them all

    def add(self, kept: pa.Table) -> None:
        rows = kept.drop_columns([c for c in ("thumbnail",) if c in kept.column_names])
        uris = rows.column("uri").to_pylist()
        with ThreadPoolExecutor(READERS) as pool:
            images = list(pool.map(_read, uris))
        for i, (uri, image) in enumerate(zip(uris, images, strict=True)):
            if isinstance(image, str):
                self.unreadable.append((uri, image))
                continue
            row = {name: rows.column(name)[i] for name in rows.column_names}
            self._writer().add(row, image)
            self.rows += 1
            if self.writer.count >= self.shard_size:
                self._close_shard()

    def _writer(self) -> WdsWriter:
        if self.writer is None:
            path = posixpath.join(self.folder, f"{len(self.shards):05d}.tar")
            self.writer = WdsWriter(self.fs, path, self.policy)
        return self.writer

    def _close_shard(self) -> None:
        if self.writer is not None and self.writer.count:
            self.writer.close()
            self.shards.append(self.writer.path)
        self.writer = None

    def close(self) -> list[str]:
        self._close_shard()
        return self.shards


def _read(uri: str) -> bytes | str:
    try:
        return read_source(uri, MAX_SOURCE_BYTES)
    except Exception as exc:  # noqa: BLE001 - counted and listed, the subset goes on
        return str(exc) or type(exc).__name__


FORMATS = {"parquet": ParquetManifest, "webdataset": WebDatasetShards}


def user_columns(schema: pa.Schema, model_columns: list[str]) -> list[str]:
    """The run's columns that came from the source (not vlpipe's, not the models' extra ones)."""
    return [n for n in schema.names if n not in RESERVED_COLUMNS and n not in model_columns]


def open_folder(to: str):
    fs, path = fsspec.core.url_to_fs(to)
    return fs, path
