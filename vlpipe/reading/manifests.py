"""Manifest tables (.parquet, .csv, .jsonl/.json) with a uri/url/path/image column and an optional
text/caption/alt column; relative paths resolve against the manifest's directory.

Planning reads a Parquet file's footer only: each row group becomes one or more row-range specs.
A worker reads its row group (only the columns it needs), never the whole table. JSON lines and
quote-free CSV files are cut into byte ranges (see `lines.py`); other CSV and JSON files are one
spec each, streamed in blocks by the worker.
"""

from __future__ import annotations

import json
import os
import posixpath
from collections.abc import Iterator

import fsspec
import pyarrow as pa

from vlpipe.errors import VlpipeError
from vlpipe.reading.files import ext, one_line, public
from vlpipe.reading.lines import byte_ranges, range_tables
from vlpipe.reading.specs import KIND_MANIFEST, Record, ShardSpec, digest_of
from vlpipe.schema import RESERVED_COLUMNS, image_id

URI_COLUMNS = ("uri", "url", "path", "image")
TEXT_COLUMNS = ("text", "caption", "alt")
#: a row group is split into at most this many specs (each re-reads the group's uri column)
MAX_SPLITS_PER_GROUP = 16
#: the last row index of a file whose row count is not known at planning (CSV, JSON lines)
_WHOLE = 10**12


def plan_manifest(
    fs, path: str, target: int, columns: tuple[str, ...] | None = None
) -> Iterator[ShardSpec]:
    """Row-range specs of a manifest, from its footer (Parquet) or its first block (CSV,
    JSON). Its other columns travel to the output (only `columns`, when given): one that
    clashes with a column of vlpipe's own, or a named one it lacks, is a one-line error."""
    url = public(fs, path)
    info = fs.info(path)
    digest = digest_of(info.get("size"), info.get("mtime") or info.get("LastModified"))
    if ext(path) != "parquet":
        _check_extra_columns(_check_first_block(url), url, columns)
        ranges = byte_ranges(fs, path, int(info.get("size") or 0), target)
        if ranges is None:
            yield ShardSpec(KIND_MANIFEST, url, _row(url, 0), _row(url, _WHOLE), digest)
        for start, stop in ranges or ():
            first, last = f"{url}#b{start:013d}", f"{url}#b{stop - 1:013d}"
            yield ShardSpec(KIND_MANIFEST, url, first, last, digest, None, -1, start, stop)
        return
    groups, names = _row_groups(fs, path, url)
    _check_extra_columns(names, url, columns)
    if sum(groups) == 0:
        raise VlpipeError(f"no images found in manifest {url} (it has no rows)")
    offset = 0
    for group, rows in enumerate(groups):
        step = max(target, -(-rows // MAX_SPLITS_PER_GROUP))
        for start in range(0, rows, step):
            stop = min(rows, start + step)
            first, last = _row(url, offset + start), _row(url, offset + stop - 1)
            yield ShardSpec(
                KIND_MANIFEST, url, first, last, digest, stop - start, group, start, stop
            )
        offset += rows


def _check_extra_columns(names: list[str], url: str, columns: tuple[str, ...] | None) -> None:
    uri_col, text_col = _columns(names, url)
    extra = [n for n in names if n not in (uri_col, text_col)]
    missing = [c for c in columns or () if c not in extra]
    if missing:
        raise VlpipeError(
            f"--columns names {missing[0]!r}, which manifest {url} does not have besides its"
            f" uri and text columns (it has: {', '.join(extra) or 'none'})"
        )
    kept = [n for n in extra if columns is None or n in columns]
    clash = [n for n in kept if n in RESERVED_COLUMNS]
    if clash:
        raise VlpipeError(
            f"manifest {url} has a column {clash[0]!r}, a name vlpipe's output uses itself:"
            " rename it, or leave it out with --columns"
        )


def _check_first_block(url: str) -> list[str]:
    """A CSV or JSON manifest's columns and first rows, so a bad one fails before any work."""
    spec = ShardSpec(KIND_MANIFEST, url, _row(url, 0), _row(url, _WHOLE), "")
    try:
        first = next((table for table, _ in _tables(spec)), None)
    except (pa.ArrowException, ValueError, TypeError, AttributeError) as exc:
        raise VlpipeError(f"cannot read manifest {url}: {one_line(exc)}") from None
    if first is None or first.num_rows == 0:
        raise VlpipeError(f"no images found in manifest {url} (it has no rows)")
    _columns(first.column_names, url)
    return first.column_names


def manifest_columns(url: str, columns: tuple[str, ...] | None = None) -> list[str]:
    """The columns a manifest carries to the output (besides its uri and text columns; only
    `columns` when given): for checks at planning, such as a clash with an --ask column."""
    import fsspec

    fs, path = fsspec.core.url_to_fs(url)
    names = _row_groups(fs, path, url)[1] if ext(path) == "parquet" else _check_first_block(url)
    uri_col, text_col = _columns(names, url)
    return [n for n in names if n not in (uri_col, text_col) and (columns is None or n in columns)]


def _row(url: str, index: int) -> str:
    return f"{url}#{index:013d}"


def _row_groups(fs, path: str, url: str) -> tuple[list[int], list[str]]:
    import pyarrow.parquet as pq

    try:
        with fs.open(path, "rb") as f:
            meta = pq.ParquetFile(f).metadata
            columns = meta.schema.to_arrow_schema().names
            _columns(columns, url)  # a manifest without a uri column fails before any work
            return [meta.row_group(i).num_rows for i in range(meta.num_row_groups)], columns
    except (pa.ArrowException, ValueError, TypeError) as exc:
        raise VlpipeError(f"cannot read manifest {url}: {one_line(exc)}") from None


def _columns(names: list[str], url: str) -> tuple[str, str | None]:
    lower = {n.lower(): n for n in reversed(names)}  # first spelling wins
    uri_col = next((lower[c] for c in URI_COLUMNS if c in lower), None)
    if uri_col is None:
        raise VlpipeError(
            f"manifest {url} has no uri column (one of {', '.join(URI_COLUMNS)});"
            f" its columns: {', '.join(names) or 'none'}"
        )
    return uri_col, next((lower[c] for c in TEXT_COLUMNS if c in lower), None)


# ---- reading, in a worker -----------------------------------------------------------------------


def manifest_records(spec: ShardSpec) -> Iterator[Record]:
    """The records of one spec's rows; a row without a uri becomes a failure record, named by
    its row number (or, in a byte range of a line file, by its line's byte offset)."""
    url = spec.url
    base = posixpath.dirname(url) if "://" in url else os.path.dirname(url)
    for table, rows in _tables(spec):
        uri_col, text_col = _columns(table.column_names, url)
        uris = _strings(table, uri_col, url)
        texts = _strings(table, text_col, url) if text_col else [None] * len(uris)
        others = [c for c in table.column_names if c not in (uri_col, text_col)]
        fields = [table.schema.field(c) for c in others]
        extras = table.select(others).to_pylist() if others else [None] * len(uris)
        for uri, text, row, extra in zip(uris, texts, rows, extras, strict=True):
            uri = (uri or "").strip()
            if uri:
                record = Record.of(_resolve(uri, base), text)
                record.extra, record.extra_fields = extra, fields
                yield record
            else:
                why = ("missing-uri", f"{url} {row.replace('=', ' ')}: no {uri_col} value")
                yield Record("", image_id(f"{url}#{row}"), failure=why)


def _tables(spec: ShardSpec) -> Iterator[tuple[pa.Table, list[str]]]:
    """(table, a name for each row) of the spec's rows, a block at a time."""
    import pyarrow.parquet as pq

    fs, path = fsspec.core.url_to_fs(spec.url)
    kind = ext(path)
    index = 0 if spec.stop and kind != "parquet" else int(spec.first.rsplit("#", 1)[1])
    with fs.open(path, "rb") as f:
        if kind == "parquet":
            pf = pq.ParquetFile(f)
            group = pf.read_row_group(spec.row_group)  # every column travels to the output
            tables = [group.slice(spec.start, spec.stop - spec.start)]
        elif spec.stop:  # a byte range of a line file
            for table, offsets in range_tables(f, kind, spec.start, spec.stop):
                yield table, [f"byte={o}" for o in offsets]
            return
        else:
            tables = _csv_blocks(f) if kind == "csv" else _json_blocks(f, kind)
        for table in tables:
            yield table, [f"row={i}" for i in range(index, index + table.num_rows)]
            index += table.num_rows


def _csv_blocks(f) -> Iterator[pa.Table]:
    import pyarrow.csv as pcsv

    convert = pcsv.ConvertOptions(strings_can_be_null=True)
    reader = pcsv.open_csv(f, convert_options=convert)
    for batch in reader:
        yield pa.Table.from_batches([batch])


def _json_blocks(f, kind: str) -> Iterator[pa.Table]:
    import pyarrow.json as pjson

    head = f.read(64).lstrip()
    f.seek(0)
    if kind == "json" and head.startswith(b"["):  # a JSON array rather than JSON lines
        yield pa.Table.from_pylist(json.load(f))
        return
    for batch in pjson.open_json(f):
        yield pa.Table.from_batches([batch])


def _strings(table: pa.Table, column: str, url: str) -> list[str | None]:
    try:
        return table.column(column).cast(pa.string()).to_pylist()
    except (pa.ArrowException, ValueError) as exc:
        raise VlpipeError(
            f"manifest {url}: column {column!r} ({table.schema.field(column).type})"
            f" does not hold strings: {one_line(exc)}"
        ) from None


def _resolve(uri: str, base: str) -> str:
    """Relative manifest paths resolve against the manifest's directory; URLs stay as given."""
    if "://" in uri or os.path.isabs(uri):
        return uri
    if "://" in base:
        protocol, rest = base.split("://", 1)
        return f"{protocol}://{posixpath.normpath(posixpath.join(rest, uri))}"
    return os.path.normpath(os.path.join(base, uri))
