"""Shard specs: the cheap, small description of one unit of work that travels to a worker.

The driver makes specs without opening an image or a tar member; a worker turns one spec into
records (see `vlpipe.reading.records`). A spec is also the unit of resume: its `key` names the
slot of the source it covers (a tar, a row range of a manifest, a page of a listing), `digest`
the content that slot had when it was planned, and `first`..`last` the range of the source's
order it covers, so a rerun can tell which done specs overlap a changed one.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace

from vlpipe.schema import image_id

KIND_TAR = "tar"
KIND_MANIFEST = "manifest"
KIND_PAGE = "page"  # a page of a directory listing or glob


@dataclass(frozen=True)
class ShardSpec:
    kind: str
    url: str  # the tar, the manifest, or (once saved) the page file a worker reads
    first: str  # range of the source's order this spec covers (inclusive)
    last: str
    digest: str  # content version of the slot: size/mtime of a file, hash of a page's names
    count: int | None = None  # inputs, when known without reading the inputs
    row_group: int = -1  # manifest: the Parquet row group (-1: the whole file)
    start: int = 0  # manifest: rows [start, stop) of the row group
    stop: int = 0
    uris: tuple[str, ...] = field(default=(), repr=False)  # a page's uris until it is saved

    @property
    def key(self) -> str:
        """The spec's name, from where it starts and what it holds: its done marker is named by
        it, so a marker is never replaced by one for other content."""
        blob = f"{self.kind}\n{self.first}\n{self.digest}"
        return hashlib.sha1(blob.encode()).hexdigest()[:20]

    def without_uris(self, url: str | None = None) -> ShardSpec:
        return replace(self, uris=(), url=url if url is not None else self.url)


@dataclass
class Record:
    """One input as a worker sees it; tar members arrive with their bytes (or the error)."""

    uri: str
    image_id: str
    text: str | None = None
    data: bytes | Exception | None = None
    failure: tuple[str, str] | None = None  # (reason, message): the input itself is unusable
    extra: dict | None = None  # the source's other columns / sample members, carried through
    extra_fields: list | None = None  # their Arrow fields, when the source has types

    @classmethod
    def of(cls, uri: str, text: str | None = None, data=None) -> Record:
        return cls(uri, image_id(uri), clean_text(text), data)


def clean_text(text) -> str | None:
    if text is None:
        return None
    text = str(text).strip()
    return text or None


def digest_of(*parts: object) -> str:
    return hashlib.sha1("\n".join(map(str, parts)).encode()).hexdigest()[:16]
