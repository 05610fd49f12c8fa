"""Blurring faces (or any boxes) in an image, leaving every pixel outside the boxes untouched.

Why: DataComp ships face boxes and blurs faces when images are exported; vlpipe does the same
for every image it exports or shows (WebDataset shards, curated subsets, thumbnails). Boxes are
normalised (x0, y0, x1, y1) in [0, 1] of the image as displayed, so one set of boxes fits the
image at any size.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

from PIL import Image, ImageFilter

Box = Sequence[float]
#: Gaussian radius as a share of the box's longer side: strong enough that a face is not
#: recognisable, small enough to stay a blur rather than a flat patch
RADIUS_SHARE = 0.15


def pixel_box(box: Box, width: int, height: int) -> tuple[int, int, int, int] | None:
    """A normalised box in whole pixels, clipped to the image (rounded outwards); None if empty."""
    x0, y0, x1, y1 = (float(v) for v in box)
    left, top = max(0, int(x0 * width)), max(0, int(y0 * height))
    right, bottom = min(width, -int(-x1 * width // 1)), min(height, -int(-y1 * height // 1))
    if right <= left or bottom <= top:
        return None
    return left, top, right, bottom


def blur_boxes(image: Image.Image, boxes: Sequence[Box]) -> Image.Image:
    """A copy of `image` with each box blurred; the input is not modified."""
    out = image.copy()
    for box in boxes or ():
        area = pixel_box(box, *image.size)
        if area is None:
            continue
        region = out.crop(area)
        radius = max(2.0, RADIUS_SHARE * max(region.size))
        out.paste(region.filter(ImageFilter.GaussianBlur(radius)), area[:2])
    return out


def blur_jpeg(jpeg: bytes, boxes: Sequence[Box] | None, quality: int = 85) -> bytes:
    """A JPEG thumbnail with the boxes blurred (the same bytes when there are none)."""
    if not boxes:
        return jpeg
    with Image.open(io.BytesIO(jpeg)) as im:
        image = im.convert("RGB")
    buf = io.BytesIO()
    blur_boxes(image, boxes).save(buf, "JPEG", quality=quality, optimize=True)
    return buf.getvalue()


__all__ = ["Box", "blur_boxes", "blur_jpeg", "pixel_box"]
