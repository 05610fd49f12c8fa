"""Tables for the Python API: a run's rows as Arrow, search hits as a pandas DataFrame that shows
its thumbnails in Jupyter (`_repr_html_`), and what a query may be (text, PIL image, path)."""

from __future__ import annotations

import base64
import os
from html import escape

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from vlpipe.errors import VlpipeError
from vlpipe.rundir import RunDir

#: the first columns of a search result, in order (then found_by, duplicates, asked columns)
HIT_COLUMNS = ["rank", "score", "image_id", "uri", "caption"]
#: thumbnails in a notebook: small, and never more than this many per result
THUMB_PX = 96
MAX_THUMBS = 100
MAX_SOURCE_BYTES = 64 << 20


def query_image(query):
    """The PIL image a query stands for (an image, or the path of an image file), else None."""
    from PIL import Image

    if isinstance(query, Image.Image):
        return query.convert("RGB")
    if isinstance(query, os.PathLike) or (isinstance(query, str) and os.path.isfile(query)):
        path = os.fspath(query)
        try:
            with Image.open(path) as im:
                return im.convert("RGB")
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            raise VlpipeError(f"cannot read image {path}: {exc}") from None
    return None


def read_rows(run: RunDir, columns: list[str] | None, where: str | None) -> pa.Table:
    """Every part's rows, the named columns (all when None), those `where` keeps."""
    from vlpipe.search.where import parse_where
    from vlpipe.search.where_rows import run_schema

    run.require_manifest()
    parts = run.parts()
    schema = run_schema(run, parts)
    wanted = list(schema.names) if columns is None else list(columns)
    missing = [c for c in wanted if c not in schema.names]
    if missing:
        raise VlpipeError(f"no column {', '.join(missing)} in {run.path}")
    flt = parse_where(where, schema) if where is not None and where.strip() else None
    read = list(dict.fromkeys(wanted + list(flt.columns if flt else [])))
    tables = []
    for part in parts:
        with run.fs.open(part, "rb") as f:
            names = pq.read_schema(f).names
            f.seek(0)
            table = pq.read_table(f, columns=[c for c in read if c in names])
        for name in read:  # a source column this part lacks: nulls
            if name not in table.column_names:
                table = table.append_column(name, pa.nulls(table.num_rows, schema.field(name).type))
        if flt is not None:
            table = table.filter(flt.expression)
        tables.append(table.select(wanted))
    if not tables:
        return schema.empty_table().select(wanted)
    return pa.concat_tables(tables, promote_options="permissive")


class SearchResult(pd.DataFrame):
    """Search hits, one row each; shows thumbnails in Jupyter."""

    @property
    def _constructor(self):
        return SearchResult

    @classmethod
    def of_hits(cls, hits: list, columns: list[str]) -> SearchResult:
        rows = []
        for hit in hits:
            row = {"rank": hit.rank, "score": hit.score, "image_id": hit.image_id,
                   "uri": hit.uri, "caption": hit.caption, "found_by": hit.found_by}  # fmt: skip
            if hit.duplicates is not None:
                row["duplicates"] = hit.duplicates
            row.update(hit.columns or {})
            rows.append(row)
        extra = ["found_by"] + (["duplicates"] if any("duplicates" in r for r in rows) else [])
        return cls(rows, columns=[*HIT_COLUMNS, *extra, *[c for c in columns if c not in extra]])

    def _repr_html_(self) -> str:
        """A table with each hit's thumbnail (made from its source, at most MAX_THUMBS)."""
        shown = self.head(MAX_THUMBS)
        names = [c for c in shown.columns if c != "thumbnail"]
        head = "".join(f"<th>{escape(str(c))}</th>" for c in ["", *names])
        body = []
        for _, row in shown.iterrows():
            cells = [_thumb_cell(row)] + [f"<td>{escape(_text(row[c]))}</td>" for c in names]
            body.append("<tr>" + "".join(cells) + "</tr>")
        more = f"<p>{len(self) - len(shown)} more rows</p>" if len(self) > len(shown) else ""
        return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>{more}"


def _thumb_cell(row) -> str:
    data = _thumbnail(row)
    if data is None:
        return "<td>(no image)</td>"
    src = "data:image/jpeg;base64," + base64.b64encode(data).decode("ascii")
    return f'<td><img src="{src}" alt="{escape(str(row.get("uri", "")))}"></td>'


def _thumbnail(row) -> bytes | None:
    from vlpipe.images.thumbnails import ThumbnailError, thumbnail_jpeg
    from vlpipe.reading.sources import read_source

    stored = row.get("thumbnail")
    try:
        if isinstance(stored, bytes):
            return thumbnail_jpeg(stored, THUMB_PX)
        return thumbnail_jpeg(read_source(str(row["uri"]), MAX_SOURCE_BYTES), THUMB_PX)
    except ThumbnailError:
        return None


def _text(value) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "" if value is None else str(value)
