"""The bytes of an indexed image, read again to make its thumbnail or to query with it.

Here, below the layers that need it (serve's thumbnails and image queries, dedup's report), so
none of them imports another to read a source (vlpipe.images.thumbnails makes the thumbnail).
An indexed uri is whatever the pipeline read: a local path, any fsspec URL (`s3://`, `gs://`,
`memory://`), or a member of a tar shard, which the pipeline names `<tar url>#<member name>`
(vlpipe.reading.tars). Every read is capped at
`max_bytes`, and every way a source can fail to read is one ThumbnailError, so a request or a
report never ends in a traceback.
"""

from __future__ import annotations

import logging
import tarfile

import fsspec

from vlpipe.images.thumbnails import ThumbnailError
from vlpipe.reading.files import TAR_SUFFIXES

log = logging.getLogger(__name__)

#: bytes fetched per request while walking a tar's headers on object storage: headers sit between
#: members, so a small block re-fetches little; seeks skip the members in between
TAR_BLOCK = 1 << 20


def read_source(uri: str, max_bytes: int) -> bytes:
    """The bytes at an indexed uri, at most `max_bytes` (raises ThumbnailError)."""
    tar = split_tar_uri(uri)
    if tar is not None:
        return read_tar_member(*tar, max_bytes)
    return read_url(uri, max_bytes)


def split_tar_uri(uri: str) -> tuple[str, str] | None:
    """(tar url, member name) of a tar member's uri, else None.

    Split on the last '#' only, and only when what precedes it names a tar: a member name has
    no '#' of its own in the pipeline's uris, while a plain file's name may well contain one.
    """
    url, sep, member = uri.rpartition("#")
    if not sep or not member or not url.lower().endswith(TAR_SUFFIXES):
        return None
    return url, member


def read_url(uri: str, max_bytes: int) -> bytes:
    """A whole file, local or behind any fsspec URL."""
    try:
        with fsspec.open(uri, "rb") as f:
            data = f.read(max_bytes + 1)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError):
        raise ThumbnailError("the indexed image is no longer readable", missing=True) from None
    except Exception as exc:  # noqa: BLE001 - remote filesystems raise their own error types
        raise _unreadable("the indexed image", exc) from None
    _check_size(len(data), max_bytes)
    return data


def read_tar_member(url: str, member: str, max_bytes: int) -> bytes:
    """One member of a tar shard (.tar, .tar.gz, .tgz), found by walking the tar's headers.

    The tar is opened seekable, so the walk skips over other members' data in a plain tar (a
    gzipped one is decompressed up to the member); it stops at the member. As in the pipeline,
    the compression is detected from the bytes, not the name.
    """
    try:
        fs, path = fsspec.core.url_to_fs(url)
        with fs.open(path, "rb", block_size=TAR_BLOCK) as f:
            with tarfile.open(fileobj=f, mode="r:*") as tar:
                return _member_bytes(tar, member, max_bytes)
    except ThumbnailError:
        raise
    except FileNotFoundError:
        raise ThumbnailError("the indexed tar shard is no longer readable", missing=True) from None
    except Exception as exc:  # noqa: BLE001 - tarfile, gzip, zlib and remote errors alike
        raise _unreadable("the indexed tar shard", exc) from None


def _member_bytes(tar: tarfile.TarFile, member: str, max_bytes: int) -> bytes:
    for info in tar:
        if info.name != member or not info.isfile():
            continue
        _check_size(info.size, max_bytes)
        data = tar.extractfile(info).read(max_bytes + 1)
        if len(data) < info.size:
            raise ThumbnailError("the indexed tar member is cut short", missing=True)
        return data
    raise ThumbnailError("the indexed image is no longer in its tar shard", missing=True)


def _check_size(size: int, max_bytes: int) -> None:
    if size > max_bytes:
        raise ThumbnailError(f"the indexed image is over {max_bytes // 2**20} MB")


def _unreadable(what: str, exc: BaseException) -> ThumbnailError:
    """A 404 with the cause in one line; the full error goes to the debug log."""
    log.debug("cannot read %s", what, exc_info=exc)
    reason = " ".join(str(exc).split()) or type(exc).__name__
    return ThumbnailError(f"cannot read {what}: {reason}", missing=True)
