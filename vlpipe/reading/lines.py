"""Line-oriented manifests (JSON lines, and CSV without quoted fields) split by byte range.

The planner reads only the first 64 KB to estimate the line length, then cuts the file into byte
ranges of about `target` lines; a worker seeks to its range, skips the line it lands inside (the
previous range owns it) and reads whole lines until it passes the range's end, as Hadoop's text
input does. A CSV whose first 64 KB holds a quote may hold a quoted newline, which a byte range
could cut in two, so it is read whole by one worker (say so: split it or use Parquet to spread it).
"""

from __future__ import annotations

import io
from collections.abc import Iterator

import pyarrow as pa

from vlpipe.reading.files import ext

SAMPLE_BYTES = 1 << 16
#: lines parsed into one Arrow table at a time by a worker
BLOCK_LINES = 4096


def byte_ranges(fs, path: str, size: int, target: int) -> list[tuple[int, int]] | None:
    """[start, stop) ranges of about `target` lines each, or None: read the file whole."""
    with fs.open(path, "rb") as f:
        sample = f.read(SAMPLE_BYTES)
    kind = ext(path)
    if kind == "csv" and b'"' in sample:
        return None
    if kind == "json" and sample.lstrip().startswith(b"["):
        return None
    lines = sample.count(b"\n")
    if lines < 2:
        return None
    step = max(1024, int(len(sample) / lines * target))
    if size <= step:
        return None
    return [(start, min(size, start + step)) for start in range(0, size, step)]


def range_tables(f, kind: str, start: int, stop: int) -> Iterator[tuple[pa.Table, list[int]]]:
    """(table, byte offset of each row's line) for the lines that start in [start, stop)."""
    header = f.readline() if kind == "csv" else b""
    if start > len(header):
        f.seek(start - 1)
        f.readline()  # the line that starts before `start` belongs to the previous range
    pos = f.tell()
    lines: list[bytes] = []
    offsets: list[int] = []
    while pos < stop:
        line = f.readline()
        if not line:
            break
        if line.strip():
            lines.append(line if line.endswith(b"\n") else line + b"\n")
            offsets.append(pos)
        pos += len(line)
        if len(lines) >= BLOCK_LINES:
            yield _parse(kind, header, lines), offsets
            lines, offsets = [], []
    if lines:
        yield _parse(kind, header, lines), offsets


def _parse(kind: str, header: bytes, lines: list[bytes]) -> pa.Table:
    data = io.BytesIO(header + b"".join(lines))
    if kind == "csv":
        import pyarrow.csv as pcsv

        convert = pcsv.ConvertOptions(strings_can_be_null=True)
        return pcsv.read_csv(data, convert_options=convert)
    import pyarrow.json as pjson

    return pjson.read_json(data)
