"""What the user passed -> a stream of shard specs, made without opening an image or a tar.

A source is one of
- a directory (recursive) or glob, local or on any fsspec filesystem (`s3://`, `gs://`,
  `memory://`): pages of its sorted listing;
- a manifest (.parquet, .csv, .jsonl/.json) or a glob of them (`lists/*.parquet`): row ranges;
- WebDataset tar shards (a path, a glob or a brace range `shards/{00000..00009}.tar`): one spec
  per tar.
Planning raises VlpipeError (one line) for anything the user can fix; everything that can only be
found by reading an input (a broken tar, a missing file named in a manifest) becomes a failure row
in the worker that reads it.
"""

from __future__ import annotations

import glob
import posixpath
from collections.abc import Iterator

import fsspec

from vlpipe.errors import VlpipeError
from vlpipe.reading.braces import expand_braces, has_braces
from vlpipe.reading.files import (
    MANIFEST_EXTENSIONS,
    ext,
    hidden,
    is_image,
    is_tar,
    one_line,
    public,
)
from vlpipe.reading.listing import Entry, cut_pages, iter_files, iter_glob
from vlpipe.reading.manifests import plan_manifest
from vlpipe.reading.specs import KIND_PAGE, ShardSpec, digest_of
from vlpipe.reading.tars import tar_spec


def plan(source: str, target: int, columns: tuple[str, ...] | None = None) -> Iterator[ShardSpec]:
    """Every shard spec of `source`, streamed; pages and row ranges of about `target` inputs.
    `columns`: the manifest columns to carry to the output (default: all), checked here."""
    source = str(source)
    try:
        if has_braces(source) and not _exists(source):
            yield from _plan_braces(source, target, columns)
        else:
            yield from _plan_one(source, target, columns)
    except VlpipeError:
        raise
    except ImportError as exc:
        raise VlpipeError(
            f"cannot read {source}: {exc} (install vlpipe[s3] or vlpipe[gcs])"
        ) from None
    except (OSError, ValueError) as exc:  # permissions, bad URL, credentials
        raise VlpipeError(f"cannot list {source}: {one_line(exc)}") from None


def _plan_one(source: str, target: int, columns=None) -> Iterator[ShardSpec]:
    fs, path = fsspec.core.url_to_fs(source)
    if glob.has_magic(path):
        yield from _plan_glob(fs, path, source, target, columns)
        return
    if fs.isdir(path):
        specs = _route(fs, iter_files(fs, path), target, tars=False)
        yield from _not_empty(specs, f"no images found under {source}")
        return
    if not fs.isfile(path):
        raise VlpipeError(f"input not found: {source} does not exist")
    if is_tar(path):
        yield tar_spec(public(fs, path), fs.info(path))
    elif is_image(path):
        yield _page([public(fs, path)])
    elif ext(path) in MANIFEST_EXTENSIONS:
        yield from plan_manifest(fs, path, target, columns)
    else:
        raise VlpipeError(
            f"unsupported input {public(fs, path)}: expected a directory, a glob, an image, a .tar"
            f" shard or a manifest ({', '.join('.' + e for e in MANIFEST_EXTENSIONS)})"
        )


def _plan_glob(fs, pattern: str, source: str, target: int, columns=None) -> Iterator[ShardSpec]:
    if ext(pattern) in MANIFEST_EXTENSIONS:  # `lists/*.parquet`: a glob of manifests
        matches = (p for p, _ in iter_glob(fs, pattern) if ext(p) == ext(pattern))
        specs = (s for path in matches for s in plan_manifest(fs, path, target, columns))
    else:
        specs = _route(fs, iter_glob(fs, pattern), target, tars=True)
    yield from _not_empty(specs, f"no images found matching {source}")


def _route(fs, entries: Iterator[Entry], target: int, tars: bool) -> Iterator[ShardSpec]:
    """Images go into pages, tars become specs of their own, anything else is not an input."""

    def images() -> Iterator[str]:
        for path, info in entries:
            if is_image(path):
                yield public(fs, path)
            elif tars and is_tar(path):
                tar_specs.append(tar_spec(public(fs, path), info or fs.info(path)))

    tar_specs: list[ShardSpec] = []
    for page in cut_pages(images(), target):
        yield from _drain(tar_specs)
        yield _page(page)
    yield from _drain(tar_specs)


def _drain(specs: list[ShardSpec]) -> Iterator[ShardSpec]:
    while specs:
        yield specs.pop(0)


def _page(uris: list[str]) -> ShardSpec:
    return ShardSpec(
        KIND_PAGE, "", uris[0], uris[-1], digest_of(*uris), len(uris), uris=tuple(uris)
    )


def _plan_braces(source: str, target: int, columns=None) -> Iterator[ShardSpec]:
    """Expanded names are checked a folder listing at a time, not with a request per name."""
    names = list(dict.fromkeys(expand_braces(source)))
    fs, _ = fsspec.core.url_to_fs(names[0])
    listed: dict[str, dict[str, dict]] = {}
    for name in names:
        path = fsspec.core.url_to_fs(name)[1]
        folder = posixpath.dirname(path)
        if folder not in listed:
            entries = fs.ls(folder, detail=True) if fs.isdir(folder) else []
            listed[folder] = {e["name"].rstrip("/"): e for e in entries}
        info = listed[folder].get(path.rstrip("/"))
        if info is None or hidden(posixpath.basename(path)):
            raise VlpipeError(f"input not found: {name} does not exist (from {source})")
        if is_tar(path) and info.get("type") != "directory":
            yield tar_spec(public(fs, path), info)
        else:
            yield from _plan_one(name, target, columns)


def _not_empty(specs: Iterator[ShardSpec], message: str) -> Iterator[ShardSpec]:
    empty = True
    for spec in specs:
        empty = False
        yield spec
    if empty:
        raise VlpipeError(message)


def _exists(source: str) -> bool:
    fs, path = fsspec.core.url_to_fs(source)
    return fs.exists(path)
