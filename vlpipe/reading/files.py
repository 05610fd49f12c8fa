"""Reading one input's bytes from any fsspec filesystem, with every failure turned into a ReadError.

Workers call this; a failure becomes a failure row with the error's `reason`, never a crash.
"""

from __future__ import annotations

import os
import posixpath
import stat

import fsspec
from fsspec.implementations.local import LocalFileSystem

from vlpipe.errors import ReasonError

IMAGE_EXTENSIONS = frozenset({"jpg", "jpeg", "png", "gif", "webp", "bmp", "tif", "tiff"})
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")
MANIFEST_EXTENSIONS = ("parquet", "csv", "jsonl", "json")
#: bytes of one input read into memory at most (a 89 MP image is well under this in any format)
MAX_FILE_BYTES = 512 * 1024 * 1024


class ReadError(ReasonError):
    """An input whose bytes cannot be read: reason is one of missing, permission-denied,
    not-a-file, too-large, bad-uri, truncated, unreadable."""


def read_bytes(uri: str, max_bytes: int = MAX_FILE_BYTES) -> bytes:
    """The input's bytes; raises ReadError(reason, message) for anything that cannot be read."""
    try:
        if "://" not in uri:  # local path: skip fsspec's overhead on the hot path
            return _read_local(uri, max_bytes)
        with fsspec.open(uri, "rb") as f:
            return read_limited(f, getattr(f, "size", None), uri, max_bytes)
    except ReadError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure to read is a row, never a crash
        raise read_error(exc, uri) from None


def _read_local(path: str, max_bytes: int) -> bytes:
    """Regular files only: a FIFO named like an image would block a plain open() forever, a
    device would stream endlessly; non-blocking open, then fstat, fails them fast instead."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ReadError("not-a-file", f"not a regular file: {path}")
        return read_limited(f, info.st_size, path, max_bytes)


def read_limited(f, size: int | None, uri: str, max_bytes: int = MAX_FILE_BYTES) -> bytes:
    if size is not None and size > max_bytes:
        raise ReadError("too-large", f"{uri} has {size} bytes (limit {max_bytes})")
    data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ReadError("too-large", f"{uri} has more than {max_bytes} bytes")
    return data


def read_error(exc: BaseException, uri: str) -> ReadError:
    if isinstance(exc, ReadError):
        return exc
    if isinstance(exc, FileNotFoundError):
        return ReadError("missing", f"file not found: {uri}")
    if isinstance(exc, PermissionError):
        return ReadError("permission-denied", f"permission denied: {uri}")
    if isinstance(exc, IsADirectoryError):
        return ReadError("not-a-file", f"not a file (a directory): {uri}")
    if isinstance(exc, (ValueError, ImportError)) and not isinstance(exc, OSError):
        return ReadError("bad-uri", f"cannot open {uri}: {one_line(exc)}")
    return ReadError("unreadable", f"cannot read {uri}: {one_line(exc)}")


# ---- names ------------------------------------------------------------------------------------


def public(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """How a uri looks in results: an absolute path for local files, else a full URL."""
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
    if isinstance(fs, LocalFileSystem) and "file" in protocols:
        return os.path.abspath(path)
    return fs.unstrip_protocol(path)


def ext(path: str) -> str:
    base = posixpath.basename(path)
    return base.rsplit(".", 1)[-1].lower() if "." in base else ""


def is_image(path: str) -> bool:
    return ext(path) in IMAGE_EXTENSIONS


def is_tar(path: str) -> bool:
    return path.lower().endswith(TAR_SUFFIXES)


def hidden(name: str) -> bool:
    return name.startswith(".")


def one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
