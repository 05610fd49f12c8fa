"""WebDataset-style tar shards (.tar, .tar.gz, .tgz), read once, sequentially, by one worker.

A sample is a run of adjacent members sharing a key (the member name up to the first dot of its
basename): its image member is the input, a .txt or .json sibling its text. Members stream out as
they are read, so decoding starts on the first image while the rest of the tar is still arriving.
"""

from __future__ import annotations

import json
import posixpath
import tarfile
from collections.abc import Iterator

import fsspec

from vlpipe.reading.files import IMAGE_EXTENSIONS, MAX_FILE_BYTES, ReadError, hidden, one_line
from vlpipe.reading.specs import KIND_TAR, Record, ShardSpec, digest_of
from vlpipe.schema import RESERVED_COLUMNS, image_id

TEXT_FIELDS = ("caption", "text", "alt")  # in a member's .json sibling
#: bytes fetched per request when streaming a tar from object storage
STREAM_BLOCK = 8 * 1024 * 1024


def tar_spec(url: str, info: dict) -> ShardSpec:
    """One spec per tar, from what a listing already says about it (no request of its own)."""
    digest = digest_of(info.get("size"), info.get("mtime") or info.get("LastModified"))
    return ShardSpec(KIND_TAR, url, url, url, digest)


def tar_records(url: str) -> Iterator[Record]:
    """Every image member of the tar as a Record with its bytes (or a ReadError), in tar order;
    a tar that breaks ends with one failure record for the tar itself."""
    count = 0
    try:
        fs, path = fsspec.core.url_to_fs(url)
        with fs.open(path, "rb", block_size=STREAM_BLOCK) as f:
            with tarfile.open(fileobj=f, mode="r|*") as tar:
                for record in _samples(tar, url):
                    count += isinstance(record.data, bytes)
                    yield record
                _check_complete(tar, getattr(f, "size", None))
    except Exception as exc:  # noqa: BLE001 - whatever breaks the tar fails the tar, not the run
        after = f" after {count} images" if count else ""
        message = f"cannot read tar shard {url}{after}: {one_line(exc)}"
        yield Record(url, image_id(url), failure=("bad-tar", message))


def _samples(tar: tarfile.TarFile, url: str) -> Iterator[Record]:
    """Samples as their keys end; the images of the last sample are emitted also when the tar
    breaks inside it (then the error is raised)."""
    key, images, texts = None, [], {}
    try:
        for m in tar:
            base = posixpath.basename(m.name)
            if not m.isfile() or hidden(base) or "." not in base:
                continue
            member_key, suffix = member_key_of(m.name)
            if member_key != key:
                yield from _emit(url, images, texts)
                key, images, texts = member_key, [], {}
            if suffix.rsplit(".", 1)[-1] in IMAGE_EXTENSIONS:
                images.append((m.name, _member_bytes(tar, m, url)))
            elif suffix in ("txt", "json", "cls"):
                texts[suffix] = _member_bytes(tar, m, url, limit=1 << 20)
            cut = next((d for _, d in images if getattr(d, "reason", "") == "truncated"), None)
            if cut is not None:
                raise tarfile.ReadError(f"unexpected end of data in {m.name}")
    except Exception:
        yield from _emit(url, images, texts)
        raise
    yield from _emit(url, images, texts)


def _check_complete(tar: tarfile.TarFile, size: int | None) -> None:
    """tarfile takes a header cut short for the end of the archive; a plain tar that really
    ends has its two zero blocks after the last member, so a shorter file was cut."""
    if size is None or tar.fileobj is None or "gz" in type(tar.fileobj).__name__.lower():
        return
    if isinstance(tar.fileobj, tarfile._Stream) and tar.fileobj.comptype != "tar":
        return  # compressed: the decompressor reports a cut stream itself
    if tar.offset + 2 * tarfile.BLOCKSIZE > size:
        raise tarfile.ReadError(f"the tar ends inside a member header (at byte {size})")


def _emit(url: str, images: list, texts: dict) -> Iterator[Record]:
    meta = _json(texts.get("json"))
    text = _text(texts.get("txt"), meta)
    extra = sample_columns(meta, texts.get("cls"))
    for name, data in images:
        uri = f"{url}#{name}"
        yield Record(uri, image_id(uri), text, data, extra=extra)


def _json(data) -> dict:
    if not isinstance(data, bytes):
        return {}
    try:
        meta = json.loads(data)
    except ValueError:
        return {}
    return meta if isinstance(meta, dict) else {}


def _text(txt, meta: dict) -> str | None:
    if isinstance(txt, bytes) and txt.strip():
        return txt.decode("utf-8", "replace").strip()
    value = next((meta[k] for k in TEXT_FIELDS if meta.get(k) not in (None, "")), None)
    return value.strip() or None if isinstance(value, str) else None


def sample_columns(meta: dict, cls) -> dict | None:
    """A sample's .json keys (nested objects flattened one level, `a.b`; deeper ones kept as
    JSON text) and its .cls as columns; a key that is a name of vlpipe's own gets a `json.`
    prefix (LAION's .json holds `width`, `height`, `caption`...)."""
    out: dict = {}
    for key, value in meta.items():
        if isinstance(value, dict):
            for sub, inner in value.items():
                out[f"{key}.{sub}"] = _scalar(inner)
        else:
            out[str(key)] = _scalar(value)
    if isinstance(cls, bytes) and cls.strip():
        text = cls.decode("utf-8", "replace").strip()
        out["cls"] = int(text) if text.lstrip("-").isdigit() else text
    return {(f"json.{k}" if k in RESERVED_COLUMNS else k): v for k, v in out.items()} or None


def _scalar(value):
    """Objects and mixed lists as JSON text: a column must have one type across samples."""
    if isinstance(value, dict) or (
        isinstance(value, list) and any(isinstance(v, (dict, list)) for v in value)
    ):
        return json.dumps(value, ensure_ascii=False)
    return value


def member_key_of(name: str) -> tuple[str, str]:
    """WebDataset: key = name up to the first dot of the basename; the rest is the extension."""
    folder, base = posixpath.split(name)
    stem, suffix = base.split(".", 1)
    return posixpath.join(folder, stem), suffix.lower()


def _member_bytes(
    tar: tarfile.TarFile, m: tarfile.TarInfo, url: str, limit: int = MAX_FILE_BYTES
) -> bytes | ReadError:
    where = f"{url}#{m.name}"
    if m.size > limit:
        return ReadError("too-large", f"{where} has {m.size} bytes (limit {limit})")
    try:
        data = tar.extractfile(m).read()
    except (tarfile.ReadError, EOFError, OSError) as exc:
        return ReadError("truncated", f"{where}: {one_line(exc)}")
    if len(data) < m.size:
        return ReadError("truncated", f"{where}: {len(data)} of {m.size} bytes")
    return data
