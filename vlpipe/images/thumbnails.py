"""Small JPEG thumbnails for a result row's `thumbnail` column.

Why: search results and the web page show each hit's image, but a source may be gone, remote, or
slow to open (a tar member, an S3 object); a few KB of JPEG stored in the row is always there.
The image is the decoded one the pipeline already holds, so no extra read or decode is needed.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from PIL import Image

MAX_PX = 4096


class ThumbnailError(Exception):
    """The source image of a thumbnail cannot be read (`missing`) or decoded."""

    def __init__(self, message: str, missing: bool = False):
        super().__init__(message)
        self.missing = missing


def thumbnail_size(width: int, height: int, px: int) -> tuple[int, int]:
    """(w, h) with the longer side at most px, aspect kept, never larger than the image."""
    longer = max(width, height)
    if longer <= px:
        return width, height
    scale = px / longer
    return max(1, min(px, round(width * scale))), max(1, min(px, round(height * scale)))


def make_thumbnail(image: Image.Image, px: int, quality: int = 80) -> bytes:
    """An RGB JPEG of `image` whose longer side is at most `px` (the image is not modified)."""
    if isinstance(px, bool) or not isinstance(px, int) or not 1 <= px <= MAX_PX:
        raise ValueError(f"thumbnail size must be 1..{MAX_PX} px, not {px!r}")
    if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 100:
        raise ValueError(f"JPEG quality must be 1..100, not {quality!r}")
    from PIL import Image  # here, so that importing ThumbnailError loads no image library

    from vlpipe.images.decode import to_rgb

    rgb = to_rgb(image)  # alpha and palette transparency on white, 16-bit scaled
    size = thumbnail_size(*rgb.size, px)
    if size != rgb.size:
        rgb = rgb.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
    buf = io.BytesIO()
    rgb.save(buf, "JPEG", quality=quality, optimize=True)
    return buf.getvalue()


def thumbnail_jpeg(data: bytes, size: int, quality: int = 85) -> bytes:
    """A JPEG of the image in `data`, at most `size` px on its longer side (raises ThumbnailError).

    Decoded by the pipeline's guarded decoder (pixel limit, JPEG draft at `size`), so a hostile
    or huge file costs what a pipeline row does and fails the same way.
    """
    from vlpipe.images.decode import DecodeError, FilterError, decode_image

    try:
        image = decode_image(data, size).image
    except (DecodeError, FilterError) as exc:
        raise ThumbnailError(f"cannot decode the indexed image: {exc}") from None
    image.thumbnail((size, size))
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=quality, optimize=True)
    return buf.getvalue()


__all__ = ["ThumbnailError", "make_thumbnail", "thumbnail_jpeg", "thumbnail_size"]
