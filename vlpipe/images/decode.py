"""The guarded image decoder: bytes in, one RGB image at the size the models need, or DecodeError.

It runs once per image on the hot path and faces whatever a bucket holds, so it:
- checks the size the header declares against a pixel limit before any pixel is decoded (a PNG or
  GIF can declare 65535x65535 in a few bytes);
- lets libjpeg scale JPEGs down while decoding (`draft`), then box-reduces any remaining integer
  factor, so a 48 MP photo never exists in memory at full size;
- applies EXIF orientation and reports the ORIGINAL width/height after orientation;
- converts every mode to RGB (alpha on white, 16-bit scaled to 8 bits, CMYK/YCCK via libjpeg);
- turns every failure into a DecodeError with a short stable reason code and a one-line message.
"""

from __future__ import annotations

import io
import threading
from dataclasses import dataclass

import numpy as np
from PIL import Image

from vlpipe.images import DEFAULT_MAX_PIXELS

__all__ = [
    "FORMATS",
    "DecodeError",
    "DecodedImage",
    "FilterError",
    "Filters",
    "ImageError",
    "decode_image",
    "to_rgb",
]

#: Formats we decode. Restricting `Image.open` keeps exotic plugins (EPS runs Ghostscript, PSD,
#: FITS, ...) away from untrusted bytes; MPO (multi-picture JPEGs from phones) opens as JPEG.
FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF", "AVIF")
_JPEG = ("JPEG", "MPO")
_WHITE = (255, 255, 255)
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")
_SWAPPED = (5, 6, 7, 8)  # EXIF orientations that rotate by 90 degrees
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_ORIENTATION = 0x0112

_pil_limit_lock = threading.Lock()


class ImageError(Exception):
    """An image error with a short stable `reason` code (for counting) and a one-line message."""

    def __init__(self, reason: str, message: str):
        super().__init__(" ".join(message.split()))
        self.reason = reason


class DecodeError(ImageError):
    """Bytes that are not a decodable image: reason is one of empty, not-an-image, truncated,
    corrupt, unsupported-mode."""


class FilterError(ImageError):
    """An image skipped on purpose, from its header alone (before any pixel is decoded): reason
    is one of too-many-pixels, too-small, aspect."""


@dataclass(frozen=True)
class Filters:
    """What to skip before the model: `max_pixels` also guards against decompression bombs."""

    min_size: int = 0  # shorter side, px; 0: off
    max_aspect: float = 0.0  # longer side / shorter side; 0: off
    max_pixels: int = DEFAULT_MAX_PIXELS

    def check(self, width: int, height: int) -> None:
        """Raises FilterError for an image of this size (as displayed)."""
        if width * height > self.max_pixels:
            raise FilterError(
                "too-many-pixels",
                f"{width}x{height} = {width * height} pixels exceeds the limit of"
                f" {self.max_pixels} (--max-pixels)",
            )
        short, long = min(width, height), max(width, height)
        if self.min_size and short < self.min_size:
            raise FilterError(
                "too-small", f"{width}x{height}: shorter side under {self.min_size} px (--min-size)"
            )
        if self.max_aspect and long > self.max_aspect * max(short, 1):
            raise FilterError(
                "aspect",
                f"{width}x{height}: aspect {long / max(short, 1):.2f} above {self.max_aspect}"
                " (--max-aspect)",
            )

    def describe(self) -> dict:
        return {"min_size": self.min_size, "max_aspect": self.max_aspect,
                "max_pixels": self.max_pixels}  # fmt: skip


@dataclass
class DecodedImage:
    image: Image.Image  # RGB, short side >= min_side unless the original is smaller
    width: int  # original width after EXIF orientation (not the reduced size)
    height: int
    orig_width: int = 0  # as stored in the file, before EXIF orientation
    orig_height: int = 0
    format: str = ""  # Pillow's name of the file format: JPEG, PNG, ...


def decode_image(
    data: bytes,
    min_side: int,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    filters: Filters | None = None,
) -> DecodedImage:
    """Decode once, reduced while the short side stays >= `min_side`. Raises DecodeError, or
    FilterError when `filters` (default: only `max_pixels`) skip the image by its header."""
    if not data:
        raise DecodeError("empty", "empty file (0 bytes)")
    filters = filters or Filters(max_pixels=max_pixels)
    try:
        return _decode(data, min_side, filters)
    except (DecodeError, FilterError):
        raise
    except Image.DecompressionBombError as exc:
        raise FilterError("too-many-pixels", f"image too large: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - Pillow plugins raise OSError, SyntaxError, struct.error...
        raise _classify(exc) from None


def _decode(data: bytes, min_side: int, filters: Filters) -> DecodedImage:
    _allow_in_pillow(filters.max_pixels)
    try:
        im = Image.open(io.BytesIO(data), formats=FORMATS)
    except Image.UnidentifiedImageError:
        raise _unidentified(data) from None
    orig_width, orig_height = im.size  # declared by the header; nothing is decoded yet
    fmt = "JPEG" if im.format in _JPEG else str(im.format)
    filters.check(orig_width, orig_height)  # a rotation changes neither side's length
    width, height = orig_width, orig_height
    if im.format in _JPEG and min_side > 0:
        im.draft("RGB", (min_side, min_side))  # libjpeg scales 1/2, 1/4, 1/8 while decoding
    im.load()
    orientation = _orientation(im)
    if orientation in _SWAPPED:
        width, height = height, width
    if orientation != 1:
        im = im.transpose(_TRANSPOSE[orientation])  # as ImageOps.exif_transpose, sans EXIF rewrite
    rgb = to_rgb(im)
    if min_side > 0:
        factor = min(rgb.size) // min_side
        if factor >= 2:  # what draft could not do (non-JPEG, or beyond 1/8): a fast box reduce
            rgb = rgb.reduce(factor)
    return DecodedImage(rgb, width, height, orig_width, orig_height, fmt)


def _allow_in_pillow(max_pixels: int) -> None:
    """Pillow refuses images above 2x its global limit inside `Image.open`, before our check.

    A caller asking for a higher limit raises Pillow's global one to match, never lowers it, so
    no other thread ever sees a limit tighter than it had; our own check enforces `max_pixels`.
    """
    current = Image.MAX_IMAGE_PIXELS
    if current is not None and max_pixels > current:
        with _pil_limit_lock:
            if Image.MAX_IMAGE_PIXELS is not None:
                Image.MAX_IMAGE_PIXELS = max(Image.MAX_IMAGE_PIXELS, max_pixels)


def _orientation(im: Image.Image) -> int:
    """EXIF orientation 1-8; a missing or unreadable EXIF block counts as upright."""
    try:
        value = im.getexif().get(_ORIENTATION, 1)
    except Exception:  # noqa: BLE001 - broken EXIF must not fail an otherwise good image
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode to RGB: alpha and palette transparency composited on white."""
    if im.mode == "RGB":
        return im
    if im.mode in _ALPHA_MODES or "transparency" in im.info:
        rgba = im.convert("RGBA")
        out = Image.new("RGB", rgba.size, _WHITE)
        out.paste(rgba, mask=rgba.getchannel("A"))
        return out
    if im.mode.startswith("I") or im.mode == "F":
        return Image.fromarray(_to_uint8(np.asarray(im), im.mode), "L").convert("RGB")
    try:
        return im.convert("RGB")  # L, 1, P, CMYK (Adobe inversion and YCCK handled by libjpeg)
    except ValueError as exc:
        raise DecodeError(
            "unsupported-mode", f"cannot convert mode {im.mode} to RGB: {exc}"
        ) from None


def _to_uint8(arr: np.ndarray, mode: str) -> np.ndarray:
    """High-bit-depth samples scaled (not clipped) to 0-255.

    I;16* and I (what 16-bit PNG/TIFF decode to) are taken as 0-65535; F as 0-1 when it fits,
    else 0-255.
    """
    arr = arr.astype(np.float32)
    if mode == "F":
        scale = 255.0 if float(arr.max(initial=0.0)) <= 1.0 else 1.0
    else:
        scale = 255.0 / 65535.0
    return np.clip(arr * scale + 0.5, 0, 255).astype(np.uint8)


def _classify(exc: Exception) -> DecodeError:
    message = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    if "truncated" in message.lower():
        return DecodeError("truncated", f"truncated image data ({message})")
    return DecodeError("corrupt", f"corrupt image data ({message})")


_MAGIC = {
    b"\xff\xd8\xff": "JPEG",
    b"\x89PNG": "PNG",
    b"GIF8": "GIF",
    b"BM": "BMP",
    b"II*\x00": "TIFF",
    b"MM\x00*": "TIFF",
}


def _unidentified(data: bytes) -> DecodeError:
    """Pillow found no format: a broken header of a known format, or not an image at all."""
    fmt = next((f for magic, f in _MAGIC.items() if data.startswith(magic)), None)
    if fmt is None and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        fmt = "WEBP"
    if fmt:
        return DecodeError("corrupt", f"corrupt or truncated {fmt} header ({len(data)} bytes)")
    head = data[:512].lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html", b"<?xml", b"<head", b"<body")):
        return DecodeError("not-an-image", "not an image: the bytes are an HTML/XML document")
    if b"\x00" not in head and head.decode("utf-8", "replace").count("\ufffd") <= 2:
        return DecodeError("not-an-image", "not an image: the bytes are text")
    supported = ", ".join(FORMATS)
    return DecodeError("not-an-image", f"not an image: unrecognised data (supported: {supported})")
