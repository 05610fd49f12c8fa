"""Input sources: turn what the user passed into a sorted list of inputs, and read their bytes.

A source is one of
- a directory (recursive) or glob, local or on any fsspec filesystem (`s3://`, `gs://`, `memory://`);
- a manifest table (.parquet, .csv, .jsonl/.json) with a uri/url/path/image column and an optional
  text/caption/alt column; relative paths resolve against the manifest's directory;
- WebDataset-style .tar shards (a path, a glob or a brace range `shards/{00000..00009}.tar`), whose
  members are grouped by key: the image member is the input, a .txt or .json sibling its text.

Listing only reads names (and tar headers); bytes are read later by the workers, where a failure
becomes a row (ReadError), never a crash.
"""

from __future__ import annotations

import glob
import json
import os
import posixpath
import re
import stat
import tarfile
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field

import fsspec
from fsspec.implementations.local import LocalFileSystem

from vlpipe.errors import VlpipeError
from vlpipe.schema import STAGE_INPUT, image_id
from vlpipe.transforms.decode import ReadError

__all__ = [
    "InputRecord",
    "Listing",
    "ReadError",
    "expand_braces",
    "list_inputs",
    "read_bytes",
    "read_tar_members",
]

IMAGE_EXTENSIONS = frozenset({"jpg", "jpeg", "png", "gif", "webp", "bmp", "tif", "tiff"})
MANIFEST_EXTENSIONS = ("parquet", "csv", "jsonl", "json")
URI_COLUMNS = ("uri", "url", "path", "image")
TEXT_COLUMNS = ("text", "caption", "alt")
TEXT_FIELDS = ("caption", "text", "alt")  # in a tar member's .json sibling
#: bytes of one input read into memory at most (a 89 MP image is well under this in any format)
MAX_FILE_BYTES = 512 * 1024 * 1024
MAX_BRACE_NAMES = 1_000_000


@dataclass(frozen=True)
class InputRecord:
    uri: str  # local absolute path, URL, or "<tar url>#<member>" for tar members
    image_id: str  # vlpipe.schema.image_id(uri)
    text: str | None = None  # alt text / given caption when the source has one
    tar: str | None = None  # the tar shard's URL when the image is a tar member
    member: str | None = None  # member name in the tar


@dataclass
class Listing:
    records: list[InputRecord]  # unique by image_id, sorted by uri
    failures: list[dict]  # FAILED_SCHEMA rows for inputs that cannot even be listed
    duplicates: int  # inputs dropped because their uri repeated an earlier one


@dataclass
class _Collector:
    """Gathers records from every part of a source; the first of a repeated uri wins."""

    records: dict[str, InputRecord] = field(default_factory=dict)
    failures: list[dict] = field(default_factory=list)
    duplicates: int = 0

    def add(self, uri: str, text: str | None = None, tar: str | None = None, member=None) -> None:
        if uri in self.records:
            self.duplicates += 1
        else:
            self.records[uri] = InputRecord(uri, image_id(uri), _clean_text(text), tar, member)

    def fail(self, key: str, uri: str, reason: str, error: str) -> None:
        self.failures.append(
            {
                "image_id": image_id(key),
                "uri": uri,
                "stage": STAGE_INPUT,
                "reason": reason,
                "error": " ".join(error.split()),
            }
        )

    def listing(self) -> Listing:
        records = [self.records[uri] for uri in sorted(self.records)]
        return Listing(records, self.failures, self.duplicates)


# ---- listing ----------------------------------------------------------------------------------


def list_inputs(source: str) -> Listing:
    """Every input of `source`; raises VlpipeError (one line) for anything the user can fix."""
    source = str(source)
    try:
        collector = _Collector()
        if _has_braces(source) and not _exists(source):
            for path in expand_braces(source):
                if not _exists(path):
                    raise VlpipeError(f"input not found: {path} does not exist (from {source})")
                _list_source(path, collector)
        else:
            _list_source(source, collector)
    except VlpipeError:
        raise
    except ImportError as exc:
        raise VlpipeError(
            f"cannot read {source}: {exc} (install vlpipe[s3] or vlpipe[gcs])"
        ) from None
    except (OSError, ValueError, tarfile.TarError) as exc:  # permissions, bad URL, credentials
        raise VlpipeError(f"cannot list {source}: {_one_line(exc)}") from None
    return collector.listing()


def _list_source(source: str, out: _Collector) -> None:
    fs, path = fsspec.core.url_to_fs(source)
    if glob.has_magic(path):
        return _list_glob(fs, path, source, out)
    if fs.isdir(path):
        before = len(out.records)
        for name in _find_images(fs, path):
            out.add(_public(fs, name))
        if len(out.records) == before:
            raise VlpipeError(f"no images found under {source}")
        return None
    if not fs.isfile(path):
        raise VlpipeError(f"input not found: {source} does not exist")
    ext = _ext(path)
    if ext == "tar":
        return _list_tar(fs, path, out, named=True)
    if ext in IMAGE_EXTENSIONS:
        return out.add(_public(fs, path))
    return _list_manifest(fs, path, out)


def _list_glob(fs, pattern: str, source: str, out: _Collector) -> None:
    before = (len(out.records), len(out.failures))
    matches = fs.glob(pattern, detail=True)  # types come with the listing: no call per match
    for path, info in sorted(matches.items()):
        if _hidden(posixpath.basename(path)):
            continue
        if info.get("type") == "directory":
            for name in _find_images(fs, path):
                out.add(_public(fs, name))
        elif _ext(path) == "tar":
            _list_tar(fs, path, out, named=False)
        elif _ext(path) in IMAGE_EXTENSIONS:
            out.add(_public(fs, path))
    if (len(out.records), len(out.failures)) == before:
        raise VlpipeError(f"no images found matching {source}")


def _find_images(fs, root: str) -> Iterator[str]:
    """Image files under `root`, recursively, skipping hidden files and folders."""
    root = root.rstrip("/")
    for path in fs.find(root):
        rel = path[len(root) :].lstrip("/")
        if _ext(path) in IMAGE_EXTENSIONS and not any(_hidden(p) for p in rel.split("/")):
            yield path


# ---- manifests --------------------------------------------------------------------------------


def _list_manifest(fs, path: str, out: _Collector) -> None:
    manifest = _public(fs, path)
    ext = _ext(path)
    if ext not in MANIFEST_EXTENSIONS:
        raise VlpipeError(
            f"unsupported input {manifest}: expected a directory, a glob, an image, a .tar shard"
            f" or a manifest ({', '.join('.' + e for e in MANIFEST_EXTENSIONS)})"
        )
    table = _read_table(fs, path, ext, manifest)
    names = {n.lower(): n for n in reversed(table.column_names)}  # first spelling wins
    uri_col = next((names[c] for c in URI_COLUMNS if c in names), None)
    if uri_col is None:
        raise VlpipeError(
            f"manifest {manifest} has no uri column (one of {', '.join(URI_COLUMNS)});"
            f" its columns: {', '.join(table.column_names) or 'none'}"
        )
    text_col = next((names[c] for c in TEXT_COLUMNS if c in names), None)
    uris = _strings(table, uri_col, manifest)
    texts = _strings(table, text_col, manifest) if text_col else [None] * len(uris)
    if not uris:
        raise VlpipeError(f"no images found in manifest {manifest} (it has no rows)")
    base = posixpath.dirname(manifest) if "://" in manifest else os.path.dirname(manifest)
    for i, (uri, text) in enumerate(zip(uris, texts, strict=True)):
        uri = (uri or "").strip()
        if not uri:
            key = f"{manifest}#row={i}"
            out.fail(key, "", "missing-uri", f"{manifest} row {i}: no {uri_col} value")
        else:
            out.add(_resolve(uri, base), text)


def _read_table(fs, path: str, ext: str, manifest: str):
    import pyarrow as pa
    import pyarrow.csv as pcsv
    import pyarrow.json as pjson
    import pyarrow.parquet as pq

    try:
        with fs.open(path, "rb") as f:
            if ext == "parquet":
                return pq.read_table(f)
            if ext == "csv":
                options = pcsv.ConvertOptions(strings_can_be_null=True)
                return pcsv.read_csv(f, convert_options=options)
            head = f.read(64).lstrip()
            f.seek(0)
            if ext == "json" and head.startswith(b"["):  # a JSON array rather than JSON lines
                return pa.Table.from_pylist(json.load(f))
            return pjson.read_json(f)
    except (pa.ArrowException, ValueError, TypeError, AttributeError) as exc:
        raise VlpipeError(f"cannot read manifest {manifest}: {_one_line(exc)}") from None


def _strings(table, column: str, manifest: str) -> list[str | None]:
    import pyarrow as pa

    try:
        return table.column(column).cast(pa.string()).to_pylist()
    except (pa.ArrowException, ValueError) as exc:
        raise VlpipeError(
            f"manifest {manifest}: column {column!r} ({table.schema.field(column).type})"
            f" does not hold strings: {_one_line(exc)}"
        ) from None


def _resolve(uri: str, base: str) -> str:
    """Relative manifest paths resolve against the manifest's directory; URLs stay as given."""
    if "://" in uri or os.path.isabs(uri):
        return uri
    if "://" in base:
        protocol, rest = base.split("://", 1)
        return f"{protocol}://{posixpath.normpath(posixpath.join(rest, uri))}"
    return os.path.normpath(os.path.join(base, uri))


# ---- tar shards -------------------------------------------------------------------------------


def _list_tar(fs, path: str, out: _Collector, named: bool) -> None:
    """Group members by WebDataset key; read only headers and the small text siblings.

    A tar named on its own that cannot be read is a user error; one of many shards in a glob or
    range becomes a failure row (stage "input", reason "bad-tar", uri = the shard's URL).
    """
    url = _public(fs, path)
    images: list[tuple[str, str]] = []  # (key, member)
    texts: dict[str, str] = {}
    captions: dict[str, str] = {}
    try:
        with fs.open(path, "rb") as f, tarfile.open(fileobj=f, mode="r:") as tar:
            for m in tar:
                base = posixpath.basename(m.name)
                if not m.isfile() or _hidden(base) or "." not in base:
                    continue
                key, ext = _member_key(m.name)
                if ext.rsplit(".", 1)[-1] in IMAGE_EXTENSIONS:
                    images.append((key, m.name))
                elif ext == "txt":
                    texts[key] = _read_member(tar, m).decode("utf-8", "replace")
                elif ext == "json":
                    captions[key] = _json_caption(_read_member(tar, m))
    except (tarfile.TarError, OSError, EOFError) as exc:
        listed = f" after {len(images)} images" if images else ""
        message = f"cannot read tar shard {url}{listed}: {_one_line(exc)}"
        if named and not images:
            raise VlpipeError(message) from None
        out.fail(url, url, "bad-tar", message)  # one bad shard of many must not stop the run
    else:
        if named and not images:
            raise VlpipeError(f"no images found in tar shard {url}")
    for key, member in images:
        text = texts.get(key) or captions.get(key)
        out.add(f"{url}#{member}", text, tar=url, member=member)


def _member_key(name: str) -> tuple[str, str]:
    """WebDataset: key = name up to the first dot of the basename; the rest is the extension."""
    folder, base = posixpath.split(name)
    stem, ext = base.split(".", 1)
    return posixpath.join(folder, stem), ext.lower()


def _read_member(tar: tarfile.TarFile, member: tarfile.TarInfo, limit: int = 1 << 20) -> bytes:
    f = tar.extractfile(member)
    return f.read(limit) if f else b""


def _json_caption(data: bytes) -> str | None:
    try:
        meta = json.loads(data)
    except ValueError:
        return None
    if not isinstance(meta, dict):
        return None
    value = next((meta[k] for k in TEXT_FIELDS if meta.get(k) not in (None, "")), None)
    return value if isinstance(value, str) else None


def read_tar_members(tar_url: str, members: Collection[str]) -> dict[str, bytes | Exception]:
    """The bytes of `members`, in one sequential pass over the tar; a ReadError for each that
    cannot be read (missing, too large, or after the point where the tar is corrupt)."""
    wanted = set(members)
    got: dict[str, bytes | Exception] = {}
    try:
        fs, path = fsspec.core.url_to_fs(tar_url)
        with fs.open(path, "rb") as f, tarfile.open(fileobj=f, mode="r:") as tar:
            for m in tar:
                if m.name not in wanted or m.name in got:
                    continue
                got[m.name] = _member_bytes(tar, m, tar_url)
                if len(got) == len(wanted):
                    break
    except Exception as exc:  # noqa: BLE001 - whatever breaks the tar fails its unread members
        error = _read_error(exc, tar_url)
        return {name: got.get(name, error) for name in wanted}
    for name in wanted - got.keys():
        got[name] = ReadError("missing-member", f"member {name} not found in {tar_url}")
    return got


def _member_bytes(tar: tarfile.TarFile, m: tarfile.TarInfo, tar_url: str) -> bytes | ReadError:
    where = f"{tar_url}#{m.name}"
    if not m.isfile():
        return ReadError("not-a-file", f"{where} is not a regular file")
    if m.size > MAX_FILE_BYTES:
        return ReadError("too-large", f"{where} has {m.size} bytes (limit {MAX_FILE_BYTES})")
    return tar.extractfile(m).read()


# ---- reading ----------------------------------------------------------------------------------


def read_bytes(record: InputRecord, max_bytes: int = MAX_FILE_BYTES) -> bytes:
    """The input's bytes; raises ReadError(reason, message) for anything that cannot be read."""
    if record.tar:
        data = read_tar_members(record.tar, [record.member])[record.member]
        if isinstance(data, Exception):
            raise data
        return data
    uri = record.uri
    try:
        if "://" not in uri:  # local path: skip fsspec's overhead on the hot path
            return _read_local(uri, max_bytes)
        with fsspec.open(uri, "rb") as f:
            return _read_limited(f, getattr(f, "size", None), uri, max_bytes)
    except ReadError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure to read is a row, never a crash
        raise _read_error(exc, uri) from None


def _read_local(path: str, max_bytes: int) -> bytes:
    """Regular files only: a FIFO named like an image would block a plain open() forever, a
    device would stream endlessly; non-blocking open, then fstat, fails them fast instead."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ReadError("not-a-file", f"not a regular file: {path}")
        return _read_limited(f, info.st_size, path, max_bytes)


def _read_limited(f, size: int | None, uri: str, max_bytes: int) -> bytes:
    if size is not None and size > max_bytes:
        raise ReadError("too-large", f"{uri} has {size} bytes (limit {max_bytes})")
    data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ReadError("too-large", f"{uri} has more than {max_bytes} bytes")
    return data


def _read_error(exc: BaseException, uri: str) -> ReadError:
    if isinstance(exc, ReadError):
        return exc
    if isinstance(exc, FileNotFoundError):
        return ReadError("missing", f"file not found: {uri}")
    if isinstance(exc, PermissionError):
        return ReadError("permission-denied", f"permission denied: {uri}")
    if isinstance(exc, IsADirectoryError):
        return ReadError("not-a-file", f"not a file (a directory): {uri}")
    if isinstance(exc, (ValueError, ImportError)) and not isinstance(exc, OSError):
        return ReadError("bad-uri", f"cannot open {uri}: {_one_line(exc)}")
    return ReadError("unreadable", f"cannot read {uri}: {_one_line(exc)}")


# ---- brace ranges -----------------------------------------------------------------------------

_RANGE = re.compile(r"(-?\d+)\.\.(-?\d+)")


def expand_braces(pattern: str) -> list[str]:
    """Shell-style brace expansion: 'a/{00..02}.tar' -> a/00.tar, a/01.tar, a/02.tar (padding
    kept when a bound has a leading zero); '{x,y}' lists alternatives. Raises VlpipeError."""
    start = pattern.find("{")
    if start < 0 or "}" in pattern[:start]:
        if "{" in pattern or "}" in pattern:
            raise VlpipeError(f"malformed brace range in {pattern}: unbalanced braces")
        return [pattern]
    end = _closing_brace(pattern, start)
    head, body, tail = pattern[:start], pattern[start + 1 : end], pattern[end + 1 :]
    out: list[str] = []
    for item in _brace_items(body, pattern):
        out.extend(expand_braces(head + item + tail))  # nested groups and later groups
        if len(out) > MAX_BRACE_NAMES:
            raise VlpipeError(f"brace range in {pattern} expands to too many names")
    return out


def _closing_brace(pattern: str, start: int) -> int:
    depth = 0
    for i in range(start, len(pattern)):
        depth += {"{": 1, "}": -1}.get(pattern[i], 0)
        if depth == 0:
            return i
    raise VlpipeError(f"malformed brace range in {pattern}: unbalanced braces")


def _brace_items(body: str, pattern: str) -> list[str]:
    items, depth, begin = [], 0, 0
    for i, ch in enumerate(body):  # split at top-level commas only: '{a,{b,c}}' -> a, {b,c}
        depth += {"{": 1, "}": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            items.append(body[begin:i])
            begin = i + 1
    if items:
        return [*items, body[begin:]]
    if m := _RANGE.fullmatch(body):
        lo, hi = m.groups()
        first, last = int(lo), int(hi)
        if abs(last - first) >= MAX_BRACE_NAMES:
            raise VlpipeError(f"brace range {{{body}}} in {pattern} expands to too many names")
        padded = any(len(b.lstrip("-")) > 1 and b.lstrip("-").startswith("0") for b in (lo, hi))
        width = max(len(lo), len(hi)) if padded else 0
        step = 1 if last >= first else -1
        return [str(i).zfill(width) for i in range(first, last + step, step)]
    raise VlpipeError(
        f"malformed brace range {{{body}}} in {pattern}: use {{first..last}} or {{a,b,...}}"
    )


# ---- small helpers ----------------------------------------------------------------------------


def _has_braces(source: str) -> bool:
    return "{" in source or "}" in source


def _exists(source: str) -> bool:
    fs, path = fsspec.core.url_to_fs(source)
    return fs.exists(path)


def _public(fs, path: str) -> str:
    """How a uri looks in results: an absolute path for local files, else a full URL."""
    if isinstance(fs, LocalFileSystem):
        return os.path.abspath(path)
    return fs.unstrip_protocol(path)


def _ext(path: str) -> str:
    base = posixpath.basename(path)
    return base.rsplit(".", 1)[-1].lower() if "." in base else ""


def _hidden(name: str) -> bool:
    return name.startswith(".")


def _clean_text(text) -> str | None:
    if text is None:
        return None
    text = str(text).strip()
    return text or None


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
