"""A shard spec -> its records, in a worker. Whatever breaks while reading becomes a record that
says so (a failure row downstream), never an exception that would stop the run."""

from __future__ import annotations

import json
from collections.abc import Iterator

import fsspec

from vlpipe.reading.files import one_line
from vlpipe.reading.manifests import manifest_records
from vlpipe.reading.specs import KIND_MANIFEST, KIND_PAGE, KIND_TAR, Record, ShardSpec
from vlpipe.reading.tars import tar_records
from vlpipe.schema import image_id


def spec_records(spec: ShardSpec) -> Iterator[Record]:
    """Every input of `spec`, in order; image bytes come along for tar members only."""
    if spec.kind == KIND_TAR:
        yield from tar_records(spec.url)
    elif spec.kind == KIND_PAGE:
        for uri in spec.uris or load_page(spec.url):
            yield Record.of(uri)
    elif spec.kind == KIND_MANIFEST:
        yield from _guarded(manifest_records(spec), spec, "bad-manifest")
    else:
        raise ValueError(f"unknown shard spec kind {spec.kind!r}")


def _guarded(records: Iterator[Record], spec: ShardSpec, reason: str) -> Iterator[Record]:
    """A source that breaks halfway fails with one record for the part not read."""
    try:
        yield from records
    except Exception as exc:  # noqa: BLE001 - any breakage of the source is a row, not a crash
        message = f"cannot read {spec.url} (rows from {spec.first}): {one_line(exc)}"
        yield Record(spec.url, image_id(spec.first), failure=(reason, message))


def save_page(url: str, uris: tuple[str, ...]) -> None:
    """A page's uris as JSON lines (a file name may hold any character but NUL)."""
    with fsspec.open(url, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(u) + "\n" for u in uris)


def load_page(url: str) -> list[str]:
    with fsspec.open(url, "r", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
