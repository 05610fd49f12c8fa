"""Streamed, sorted listings of a directory or glob, cut into pages that become shard specs.

Listings are never held whole: local directories are walked one directory at a time, S3 buckets
are read a page of 1,000 keys at a time (ListObjectsV2), and other filesystems fall back to
fsspec's `find` (held whole: a documented limit). Paths come out in lexicographic order, so a
page covers a range of names, and pages are cut where a name's hash says so (content-defined),
so a file added to a folder changes only the page it falls in: a rerun redoes that page alone.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterator

import fsspec
from fsspec.implementations.local import LocalFileSystem

from vlpipe.reading.files import hidden

S3_PAGE_KEYS = 1000
#: a page holds at most this many times the target size (a forced cut)
MAX_PAGE_FACTOR = 2


#: (fs path, what the listing said about it: a dict with size and mtime, or None for local files)
Entry = tuple[str, "dict | None"]


def iter_files(fs: fsspec.AbstractFileSystem, root: str) -> Iterator[Entry]:
    """Every file under `root` without a hidden name below it, in lexicographic order."""
    root = root.rstrip("/")
    for entry in _stream(fs, root, root + "/"):
        if not any(hidden(p) for p in entry[0][len(root) :].split("/")):
            yield entry


def iter_glob(fs: fsspec.AbstractFileSystem, pattern: str) -> Iterator[Entry]:
    """Files matching `pattern`, and every file under a directory that matches it, in order."""
    root = _glob_root(pattern)
    regex = re.compile(fsspec.utils.glob_translate(pattern.rstrip("/")))
    for entry in _stream(fs, root.rstrip("/") or "/", root):
        if _matches(regex, entry[0], root):
            yield entry


def _stream(fs, folder: str, prefix: str) -> Iterator[Entry]:
    if isinstance(fs, LocalFileSystem):
        return ((path, None) for path in _walk_local(folder))
    if hasattr(fs, "call_s3"):
        return _s3_keys(fs, prefix)
    found = fs.find(folder, detail=True)  # other filesystems: one listing, held whole
    return iter(sorted((path, info) for path, info in found.items() if path.startswith(prefix)))


def _matches(regex: re.Pattern, path: str, root: str) -> bool:
    """The path or one of its folders below `root` matches; hidden names never do."""
    rel = path[len(root) :].lstrip("/")
    parts = rel.split("/")
    if any(hidden(p) for p in parts):
        return False
    head = root.rstrip("/")
    for part in parts:
        head = f"{head}/{part}" if head else part
        if regex.fullmatch(head):
            return True
    return False


def _glob_root(pattern: str) -> str:
    """The folder above the first wildcard: everything a match can live under."""
    magic = min((i for i, c in enumerate(pattern) if c in "*?["), default=len(pattern))
    return pattern[: pattern.rfind("/", 0, magic) + 1]


def _walk_local(root: str) -> Iterator[str]:
    """Depth-first, each folder's entries sorted with folders as 'name/': lexicographic paths."""
    try:
        entries = list(os.scandir(root))
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return
    named = []
    for entry in entries:
        if hidden(entry.name):
            continue
        try:
            folder = entry.is_dir()
        except OSError:
            folder = False
        named.append((entry.name + "/" if folder else entry.name, entry.path))
    named.sort()
    del entries
    for name, path in named:
        if name.endswith("/"):
            yield from _walk_local(path)
        else:
            yield path


def _s3_keys(fs, prefix_path: str) -> Iterator[Entry]:
    """`bucket/prefix...` keys a page at a time; S3 returns them in lexicographic order."""
    bucket, _, prefix = prefix_path.partition("/")
    token = None
    while True:
        kwargs = {"Bucket": bucket, "Prefix": prefix, "MaxKeys": S3_PAGE_KEYS}
        if token:
            kwargs["ContinuationToken"] = token
        page = fs.call_s3("list_objects_v2", **kwargs)
        for obj in page.get("Contents", []):
            key = obj["Key"]
            if not key.endswith("/"):
                info = {"size": obj.get("Size"), "mtime": str(obj.get("LastModified"))}
                yield f"{bucket}/{key}", info
        token = page.get("NextContinuationToken")
        if not page.get("IsTruncated") or not token:
            return


def cut_pages(uris: Iterator[str], target: int) -> Iterator[list[str]]:
    """Pages of about `target` uris, cut after a uri whose hash is 0 mod target (and at most
    MAX_PAGE_FACTOR * target long): the cuts depend on the names, not on their positions."""
    page: list[str] = []
    for uri in uris:
        page.append(uri)
        if _is_cut(uri, target) or len(page) >= MAX_PAGE_FACTOR * target:
            yield page
            page = []
    if page:
        yield page


def _is_cut(uri: str, target: int) -> bool:
    if target <= 1:
        return True
    return int.from_bytes(hashlib.sha1(uri.encode()).digest()[:8], "big") % target == 0
