"""Lossless metadata stripping: an image's bytes without location, camera serials and notes.

Why: outputs that copy image bytes (WebDataset shards, curated subsets) would republish the GPS
coordinates and camera serial numbers of photos whose authors never meant to share them. This
rewrites the container only; the compressed pixel data is copied byte for byte, so pixels are
identical. The EXIF orientation is kept (as a one-entry EXIF block) so images still display
upright; colour profiles and other rendering data are kept; everything else goes.

- JPEG: EXIF APP1 rewritten to orientation only; XMP, MPF, IPTC, other APPn and comments dropped;
  anything after the end-of-image marker (phones' trailers, MPO's second pictures) dropped.
- PNG: text chunks, eXIf (rewritten to orientation only), tIME and unknown ancillary chunks.
- WebP: EXIF (rewritten) and XMP chunks, with the VP8X flags updated.
- GIF and BMP carry no EXIF and pass as they are. Other formats (TIFF, AVIF) pass only when
  they hold no metadata; otherwise StripError, and the caller re-encodes (images/export.py).
"""

from __future__ import annotations

import io
import struct
import zlib

from PIL import Image


class StripError(ValueError):
    """The container cannot be rewritten losslessly (malformed structure, unsupported format)."""


#: formats that cannot hold EXIF, XMP or GPS: their bytes pass unchanged
NO_METADATA = frozenset({"GIF", "BMP"})
_ORIENTATION = 0x0112


def strip_metadata(data: bytes, fmt: str) -> bytes:
    """`data` without its metadata (the same object when there was nothing to drop); raises
    StripError when that cannot be done without re-encoding."""
    fmt = (fmt or "").upper()
    if fmt in ("JPEG", "MPO"):
        return _strip_jpeg(data)
    if fmt == "PNG":
        return _strip_png(data)
    if fmt == "WEBP":
        return _strip_webp(data)
    if fmt in NO_METADATA:
        return data
    if not _holds_metadata(data):
        return data
    raise StripError(f"cannot strip {fmt or 'unknown'} metadata losslessly")


#: TIFF/EXIF tags that say where, who or with what: Exif and GPS pointers, make, model, maker
#: note, serial, XMP, IPTC, description, artist (a TIFF's own layout tags are not among them)
_PRIVATE_TAGS = frozenset(
    {0x8769, 0x8825, 0x010F, 0x0110, 0x927C, 0xA431, 0x02BC, 0x83BB, 0x010E, 0x013B}
)


def _holds_metadata(data: bytes) -> bool:
    try:
        im = Image.open(io.BytesIO(data))
        if any(k in im.info for k in ("xmp", "comment")):
            return True
        return any(tag in _PRIVATE_TAGS for tag in im.getexif())
    except Exception:  # noqa: BLE001 - unparseable: assume the worst
        return True


# ---- EXIF orientation, kept as a minimal TIFF block ------------------------------------------


def orientation_of(tiff: bytes) -> int | None:
    """The Orientation tag of IFD0 of a TIFF/EXIF block, bounds-checked; None if absent/broken."""
    if len(tiff) < 8 or tiff[:2] not in (b"II", b"MM"):
        return None
    end = "<" if tiff[:2] == b"II" else ">"
    try:
        (ifd,) = struct.unpack_from(end + "I", tiff, 4)
        (count,) = struct.unpack_from(end + "H", tiff, ifd)
        for i in range(min(count, 1000)):
            tag, kind, n = struct.unpack_from(end + "HHI", tiff, ifd + 2 + 12 * i)
            if tag == _ORIENTATION and kind == 3 and n == 1:
                (value,) = struct.unpack_from(end + "H", tiff, ifd + 2 + 12 * i + 8)
                return value if 1 <= value <= 8 else None
    except struct.error:
        return None
    return None


def orientation_tiff(orientation: int) -> bytes:
    """A big-endian TIFF block holding one tag, Orientation."""
    entry = struct.pack(">HHIHH", _ORIENTATION, 3, 1, orientation, 0)
    return b"MM\x00\x2a" + struct.pack(">IH", 8, 1) + entry + struct.pack(">I", 0)


def _kept_tiff(tiff: bytes) -> bytes | None:
    """The replacement of an EXIF block: orientation only, or nothing when upright/unknown."""
    value = orientation_of(tiff)
    return orientation_tiff(value) if value and value != 1 else None


# ---- JPEG ------------------------------------------------------------------------------------

_SOI, _EOI, _SOS, _COM = 0xD8, 0xD9, 0xDA, 0xFE
_APP0, _APP1, _APP2, _APP14 = 0xE0, 0xE1, 0xE2, 0xEE
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})


def _strip_jpeg(data: bytes) -> bytes:
    if data[:2] != b"\xff\xd8":
        raise StripError("not a JPEG (no start-of-image marker)")
    out, pos = [data[:2]], 2
    while True:
        pos = _skip_fill(data, pos)
        marker = data[pos + 1]
        if marker == _EOI:
            out.append(data[pos : pos + 2])
            break
        if marker in _STANDALONE:
            out.append(data[pos : pos + 2])
            pos += 2
            continue
        if pos + 4 > len(data):
            raise StripError("JPEG truncated inside a marker")
        (length,) = struct.unpack_from(">H", data, pos + 2)
        end = pos + 2 + length
        if length < 2 or end > len(data):
            raise StripError(f"JPEG segment 0x{marker:02X} runs past the end of the file")
        kept = _jpeg_segment(marker, data[pos + 4 : end])
        out.append(data[pos:end] if kept is None else kept)
        pos = end
        if marker == _SOS:  # entropy-coded data runs to the next real marker
            scan_end = _scan_end(data, pos)
            out.append(data[pos:scan_end])
            pos = scan_end
    stripped = b"".join(out)
    return data if stripped == data else stripped


def _skip_fill(data: bytes, pos: int) -> int:
    """The position of the next marker (0xFF fill bytes before it are allowed)."""
    if pos + 1 >= len(data) or data[pos] != 0xFF:
        raise StripError("JPEG structure broken: expected a marker")
    while data[pos + 1] == 0xFF:
        pos += 1
        if pos + 1 >= len(data):
            raise StripError("JPEG truncated")
    return pos


def _scan_end(data: bytes, pos: int) -> int:
    """The end of entropy-coded data: the first 0xFF that is neither stuffing nor a restart."""
    while True:
        pos = data.find(b"\xff", pos)
        if pos < 0 or pos + 1 >= len(data):
            raise StripError("JPEG truncated: no end-of-image marker")
        following = data[pos + 1]
        if following == 0x00 or 0xD0 <= following <= 0xD7 or following == 0xFF:
            pos += 1
            continue
        return pos


def _jpeg_segment(marker: int, payload: bytes) -> bytes | None:
    """None: keep the segment as it is; b"": drop it; other bytes: its replacement."""
    if marker == _APP1 and payload.startswith(b"Exif\x00\x00"):
        tiff = _kept_tiff(payload[6:])
        if tiff is None:
            return b""
        body = b"Exif\x00\x00" + tiff
        return b"\xff\xe1" + struct.pack(">H", len(body) + 2) + body
    if marker == _APP0:
        return None
    if marker == _APP2:
        return None if payload.startswith(b"ICC_PROFILE\x00") else b""
    if marker == _APP14:
        return None if payload.startswith(b"Adobe") else b""
    if 0xE1 <= marker <= 0xEF or marker == _COM:
        return b""  # XMP, MPF, IPTC/Photoshop, FlashPix, maker-specific, comments
    return None


# ---- PNG -------------------------------------------------------------------------------------

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: ancillary chunks that change how pixels render (colour, transparency, animation): kept
_PNG_RENDERING = frozenset(
    {b"tRNS", b"gAMA", b"cHRM", b"sRGB", b"iCCP", b"sBIT", b"bKGD", b"pHYs", b"hIST", b"sPLT",
     b"acTL", b"fcTL", b"fdAT", b"cICP", b"mDCv", b"cLLi"}
)  # fmt: skip


def _strip_png(data: bytes) -> bytes:
    if not data.startswith(_PNG_SIGNATURE):
        raise StripError("not a PNG (bad signature)")
    out, pos = [_PNG_SIGNATURE], len(_PNG_SIGNATURE)
    while True:
        if pos + 12 > len(data):
            raise StripError("PNG truncated: no IEND chunk")
        length, kind = struct.unpack_from(">I4s", data, pos)
        end = pos + 12 + length
        if end > len(data):
            raise StripError(f"PNG chunk {kind!r} runs past the end of the file")
        if kind == b"eXIf":
            tiff = _kept_tiff(data[pos + 8 : pos + 8 + length])
            if tiff is not None:
                out.append(_png_chunk(b"eXIf", tiff))
        elif kind[:1].isupper() or kind in _PNG_RENDERING:  # critical chunks always stay
            out.append(data[pos:end])
        pos = end
        if kind == b"IEND":
            break
    stripped = b"".join(out)
    return data if stripped == data else stripped


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


# ---- WebP ------------------------------------------------------------------------------------

_WEBP_KEPT = frozenset({b"VP8 ", b"VP8L", b"VP8X", b"ALPH", b"ANIM", b"ANMF", b"ICCP"})
_VP8X_EXIF, _VP8X_XMP = 0x08, 0x04


def _strip_webp(data: bytes) -> bytes:
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        raise StripError("not a WebP (bad RIFF header)")
    (riff_size,) = struct.unpack_from("<I", data, 4)
    limit = min(len(data), 8 + riff_size)
    chunks, pos, has_exif = [], 12, False
    while pos + 8 <= limit:
        kind, size = struct.unpack_from("<4sI", data, pos)
        end = pos + 8 + size + (size & 1)
        if pos + 8 + size > limit:
            raise StripError(f"WebP chunk {kind!r} runs past the end of the file")
        body = data[pos + 8 : pos + 8 + size]
        if kind == b"EXIF":
            tiff = _kept_tiff(body[6:] if body.startswith(b"Exif\x00\x00") else body)
            if tiff is not None:
                chunks.append([b"EXIF", tiff])
                has_exif = True
        elif kind in _WEBP_KEPT:
            chunks.append([kind, body])
        pos = end
    if chunks and chunks[0][0] == b"VP8X":
        flags = chunks[0][1][0] & ~(_VP8X_EXIF | _VP8X_XMP) | (_VP8X_EXIF if has_exif else 0)
        chunks[0][1] = bytes([flags]) + chunks[0][1][1:]
    body = b"WEBP" + b"".join(
        struct.pack("<4sI", kind, len(c)) + c + (b"\x00" if len(c) & 1 else b"")
        for kind, c in chunks
    )
    stripped = b"RIFF" + struct.pack("<I", len(body)) + body
    return data if stripped == data else stripped


__all__ = ["NO_METADATA", "StripError", "orientation_of", "orientation_tiff", "strip_metadata"]
