"""JPEG thumbnails of indexed images, made on first request and kept in a local disk cache.

The caller passes an image_id it has already looked up in the index and the uri the index holds
for it; nothing here ever opens a path that came from a request. Cache files are named by the
image_id alone (checked to be hex), so a cache entry cannot point outside the cache directory.
A thumbnail the run stored itself (`--save-thumbnails`, vlpipe.serve.stored) is preferred to
reading the source, and cached the same way.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path

from vlpipe.images.thumbnails import ThumbnailError, thumbnail_jpeg
from vlpipe.reading.sources import read_source

__all__ = ["SAFE_ID", "ThumbnailCache", "ThumbnailError", "default_cache_dir", "read_source"]

SAFE_ID = re.compile(r"^[0-9a-f]{8,64}$")


def default_cache_dir(index: str) -> Path:
    """A per-index folder in the user's cache dir (the index may be read-only or remote)."""
    import hashlib

    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    where = index if "://" in index else os.path.abspath(index)
    return base / "vlpipe" / "thumbs" / hashlib.sha1(where.encode()).hexdigest()[:16]


class ThumbnailCache:
    """Thumbnails at most `size` px on their longer side, JPEG, one file per image_id."""

    def __init__(
        self,
        cache_dir: str | os.PathLike,
        size: int = 256,
        max_source_mb: int = 64,
        finish: Callable[[str, bytes], bytes] | None = None,
        variant: str = "",
    ):
        self.dir = Path(cache_dir)
        self.size = size
        self.max_source_bytes = max_source_mb * 1024 * 1024
        self.finish = finish  # applied before caching (serve --blur-faces blurs faces)
        self.variant = variant  # in the file name, so differently finished ones never mix

    def path(self, image_id: str) -> Path:
        if not SAFE_ID.match(image_id):
            raise ValueError(f"not an image id: {image_id!r}")
        return self.dir / f"{image_id}-{self.size}{self.variant}.jpg"

    def get(
        self, image_id: str, uri: str, stored: Callable[[], bytes | None] | None = None
    ) -> bytes:
        """The cached thumbnail, else the run's stored one (`stored()`, as it is: the run chose
        its size), else a new one made from `uri` (raises ThumbnailError)."""
        path = self.path(image_id)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            pass
        data = stored() if stored is not None else None
        if data is None:
            data = thumbnail_jpeg(read_source(uri, self.max_source_bytes), self.size)
        if self.finish is not None:
            data = self.finish(image_id, data)
        self._save(path, data)
        return data

    def _save(self, path: Path, data: bytes) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=".tmp-", suffix=".jpg")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)  # atomic: concurrent requests never see half a file
