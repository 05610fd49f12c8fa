"""What an image file says about where, when and on what it was taken: three row columns.

Why: photos carry GPS coordinates, the camera and the time they were taken; a corpus builder needs
to know which rows hold a location before publishing them (vlpipe.images.strip removes it from the
exported bytes). Everything here reads the bytes the worker already holds (no second read) and
parses only the header; nothing decodes pixels.

Untrusted input: truncated EXIF, absurd offsets, a GPS pointer of the wrong type, maker notes
pointing outside the file. None of these raises: what cannot be read is None (a null column),
and the row is written as usual.
"""

from __future__ import annotations

import datetime as dt
import io
import re
import struct
import warnings
from dataclasses import dataclass

from PIL import Image

_MAKE, _MODEL = 0x010F, 0x0110
_EXIF_IFD, _GPS_IFD = 0x8769, 0x8825
_DATETIME_ORIGINAL = 0x9003
_GPS_LATITUDE, _GPS_LONGITUDE = 0x0002, 0x0004
#: a bound on the camera column: a make/model longer than this is not a camera name
MAX_CAMERA_CHARS = 80
_EXIF_DATE = re.compile(r"^(\d{4}):(\d{2}):(\d{2})[ T](\d{2}):(\d{2}):(\d{2})")
#: XMP's names for a location (Adobe, exiftool and phones write these into the XMP packet)
_XMP_LOCATION = (b"GPSLatitude", b"GPSLongitude")


@dataclass(frozen=True)
class PhotoFacts:
    """The metadata columns of one image; None where the file's metadata cannot be read."""

    exif_gps: bool | None = None  # the file holds a location (EXIF GPS or XMP GPS tags)
    camera: str | None = None  # "Make Model", e.g. "Canon EOS 5D Mark II"
    taken_at: dt.datetime | None = None  # EXIF DateTimeOriginal, the camera's local time


#: the facts of a file whose header cannot be parsed at all
UNKNOWN = PhotoFacts()


def read_facts(data: bytes) -> PhotoFacts:
    """The file's metadata columns, from its header only; never raises."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow warns on corrupt EXIF; we report None
            im = Image.open(io.BytesIO(data))
            return facts_of(im)
    except Exception:  # noqa: BLE001 - a header Pillow cannot parse gives null columns
        return UNKNOWN


def facts_of(im: Image.Image) -> PhotoFacts:
    """The metadata columns of an opened (not necessarily loaded) image; never raises."""
    raw = im.info.get("exif")
    if isinstance(raw, bytes | bytearray) and not exif_block_ok(bytes(raw)):
        return UNKNOWN  # Pillow skips what it cannot read; we cannot tell what was there
    try:
        exif = im.getexif()
    except Exception:  # noqa: BLE001 - an EXIF block Pillow cannot parse at all
        return UNKNOWN
    return PhotoFacts(
        exif_gps=_has_location(exif, _xmp_of(im)),
        camera=_camera(exif),
        taken_at=_taken_at(exif),
    )


#: bytes per value of each TIFF field type (1 BYTE ... 13 IFD)
_TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4}
#: tags whose value is the offset of another IFD: Exif, GPS, Interoperability
_POINTERS = (_EXIF_IFD, _GPS_IFD, 0xA005)


def exif_block_ok(raw: bytes) -> bool:
    """Whether an EXIF block is well formed: every IFD (IFD0, Exif, GPS, interoperability)
    and every value it points to lies inside the block, and sub-IFD pointers are offsets. A
    truncated block, an absurd offset, a GPS pointer of another type or a maker note pointing
    outside the file all fail."""
    tiff = raw[6:] if raw.startswith(b"Exif\x00\x00") else raw
    if len(tiff) < 8 or tiff[:4] not in (b"II*\x00", b"MM\x00*"):
        return False
    end = "<" if tiff[:2] == b"II" else ">"
    todo, seen = [struct.unpack_from(end + "I", tiff, 4)[0]], set()
    while todo:
        ifd = todo.pop()
        if ifd in seen or len(seen) > 8:
            return False  # an IFD loop, or more IFDs than any camera writes
        seen.add(ifd)
        pointers = _ifd_pointers(tiff, ifd, end)
        if pointers is None:
            return False
        todo.extend(pointers)
    return True


def _ifd_pointers(tiff: bytes, ifd: int, end: str) -> list[int] | None:
    """The sub-IFD offsets one IFD points to; None when the IFD or a value is out of bounds."""
    if ifd < 8 or ifd + 2 > len(tiff):
        return None
    (count,) = struct.unpack_from(end + "H", tiff, ifd)
    if ifd + 2 + 12 * count + 4 > len(tiff):
        return None
    pointers = []
    for i in range(count):
        tag, kind, n, value = struct.unpack_from(end + "HHII", tiff, ifd + 2 + 12 * i)
        if tag in _POINTERS:
            if kind not in (4, 13) or n != 1:
                return None
            pointers.append(value)
            continue
        size = _TYPE_SIZES.get(kind, 0) * n
        if size > 4 and value + size > len(tiff):
            return None
    return pointers


def _xmp_of(im: Image.Image) -> bytes:
    """The XMP packet as bytes, wherever Pillow's plugin put it (JPEG, PNG, WebP, TIFF)."""
    for key in ("xmp", "XML:com.adobe.xmp"):
        value = im.info.get(key)
        if isinstance(value, str):
            return value.encode("utf-8", "replace")
        if isinstance(value, bytes | bytearray):
            return bytes(value)
    return b""


def _has_location(exif: Image.Exif, xmp: bytes) -> bool | None:
    """True when a latitude or longitude is present; None when the GPS block is unreadable."""
    if any(name in xmp for name in _XMP_LOCATION):
        return True
    if _GPS_IFD not in exif:
        return False
    try:
        gps = exif.get_ifd(_GPS_IFD)
    except Exception:  # noqa: BLE001 - a pointer of the wrong type or outside the block
        return None
    if not isinstance(gps, dict) or (not gps and not _is_offset(exif.get(_GPS_IFD))):
        return None  # the pointer is not an IFD offset: we cannot tell
    return any(gps.get(tag) not in (None, b"", "", ()) for tag in (_GPS_LATITUDE, _GPS_LONGITUDE))


def _is_offset(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _text(value: object) -> str | None:
    """A printable EXIF string, NUL padding and blanks trimmed; None for any other type."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if not isinstance(value, str):
        return None
    value = " ".join(value.replace("\x00", " ").split())
    if not value or not value.isprintable():
        return None
    return value


def _camera(exif: Image.Exif) -> str | None:
    """Make and model, without the make twice ("Canon" + "Canon EOS 5D" -> "Canon EOS 5D")."""
    make, model = _text(exif.get(_MAKE)), _text(exif.get(_MODEL))
    if make and model and model.lower().startswith(make.split()[0].lower()):
        make = None
    name = " ".join(v for v in (make, model) if v)
    return name[:MAX_CAMERA_CHARS] if name else None


def _taken_at(exif: Image.Exif) -> dt.datetime | None:
    """DateTimeOriginal when it is a real date and time; cameras write "0000:00:00 00:00:00"
    when unset, and some write garbage."""
    try:
        value = _text(exif.get_ifd(_EXIF_IFD).get(_DATETIME_ORIGINAL))
    except Exception:  # noqa: BLE001 - unreadable Exif sub-IFD
        return None
    match = _EXIF_DATE.match(value or "")
    if not match:
        return None
    try:
        return dt.datetime(*(int(g) for g in match.groups()))
    except ValueError:  # month 13, day 0, ...
        return None


__all__ = ["UNKNOWN", "PhotoFacts", "exif_block_ok", "facts_of", "read_facts"]
