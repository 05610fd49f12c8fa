"""Photos with private metadata, hostile EXIF blocks and faces, made for the privacy tests.

- `private_photo(fmt)`: a JPEG, PNG or WebP whose EXIF holds GPS coordinates, a camera make and
  model, a body serial number, DateTimeOriginal and orientation 6 (and, for JPEG, an XMP packet
  with the location, a comment and a phone-style trailer after the end of the image).
- `hostile_exif()`: JPEGs whose EXIF block is broken in the ways real files are (truncated,
  absurd offsets, a GPS pointer of the wrong type, a maker note pointing outside the file).
- `face_image()`: a real face photo (scikit-image ships NASA's astronaut portrait, public domain);
  `pasted_face(...)` puts it at a known place on a flat background.
"""

from __future__ import annotations

import importlib.util
import io
import os
import struct

from PIL import Image

LATITUDE, LONGITUDE = (52.0, 21.0, 3.5), (4.0, 53.0, 1.25)
SERIAL = "SN-0042-PRIVATE"
MAKE, MODEL = "Canon", "Canon EOS 5D Mark II"
TAKEN = "2021:07:04 15:30:12"
XMP = (
    '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/'
    '22-rdf-syntax-ns#"><rdf:Description xmlns:exif="http://ns.adobe.com/exif/1.0/" '
    f'exif:GPSLatitude="52,21.06N" exif:GPSLongitude="4,53.02E" aux:SerialNumber="{SERIAL}" '
    'xmlns:aux="http://ns.adobe.com/exif/1.0/aux/"/></rdf:RDF></x:xmpmeta>'
)
#: what must not survive stripping, as it appears in the bytes
PRIVATE_BYTES = (SERIAL.encode(), b"GPSLatitude", b"Canon EOS")


def private_exif(orientation: int = 6) -> Image.Exif:
    exif = Image.Exif()
    exif[0x010F], exif[0x0110], exif[0x0112] = MAKE, MODEL, orientation
    sub = exif.get_ifd(0x8769)
    sub[0x9003], sub[0xA431] = TAKEN, SERIAL  # DateTimeOriginal, BodySerialNumber
    gps = exif.get_ifd(0x8825)
    gps[1], gps[2], gps[3], gps[4] = "N", LATITUDE, "E", LONGITUDE
    return exif


def picture(size=(96, 64)) -> Image.Image:
    """Four coloured quadrants: rotation and any pixel change show."""
    im = Image.new("RGB", size, (200, 30, 30))
    w, h = size
    im.paste((30, 160, 40), (w // 2, 0, w, h // 2))
    im.paste((30, 40, 200), (0, h // 2, w // 2, h))
    im.paste((240, 220, 30), (w // 2, h // 2, w, h))
    return im


def private_photo(fmt: str = "JPEG", size=(96, 64)) -> bytes:
    buf = io.BytesIO()
    options = {"exif": private_exif()}
    if fmt == "WEBP":
        options["lossless"] = True
    if fmt in ("JPEG", "WEBP", "PNG"):
        options["xmp"] = XMP.encode()
    picture(size).save(buf, fmt, **options)
    data = buf.getvalue()
    if fmt == "JPEG":  # a comment segment after SOI and a phone's trailer after EOI
        comment = b"taken by " + SERIAL.encode()
        data = data[:2] + b"\xff\xfe" + struct.pack(">H", len(comment) + 2) + comment + data[2:]
        data += b"SAMSUNG-TRAILER " + SERIAL.encode()
    return data


def plain_jpeg(size=(96, 64)) -> bytes:
    buf = io.BytesIO()
    picture(size).save(buf, "JPEG")
    return buf.getvalue()


def _tiff(entries: list[tuple[int, int, int, bytes]], tail: bytes = b"") -> bytes:
    """A little-endian TIFF block: IFD0 with `entries` (tag, type, count, 4-byte value)."""
    body = struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:
        body += struct.pack("<HHI", tag, kind, count) + value.ljust(4, b"\x00")[:4]
    return b"II*\x00" + struct.pack("<I", 8) + body + struct.pack("<I", 0) + tail


def jpeg_with_app1(tiff: bytes, size=(96, 64)) -> bytes:
    """A valid JPEG whose EXIF segment carries `tiff` as it is."""
    payload = b"Exif\x00\x00" + tiff
    data = plain_jpeg(size)
    return data[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + data[2:]


def hostile_exif() -> dict[str, bytes]:
    """name -> a decodable JPEG with a broken EXIF block."""
    off = lambda n: struct.pack("<I", n)  # noqa: E731
    ascii_ptr = b"abc\x00"
    return {
        # IFD0 claims 40 entries; the segment holds two
        "truncated-ifd": jpeg_with_app1(
            b"II*\x00" + off(8) + struct.pack("<HHHI", 40, 0x010F, 2, 4) + b"Abc\x00"
        ),
        "truncated-header": jpeg_with_app1(b"II*\x00\x08"),
        "absurd-ifd-offset": jpeg_with_app1(b"II*\x00" + off(0xFFFFFFF0) + b"\x00" * 8),
        # make and model stored at offsets far beyond the block
        "absurd-value-offsets": jpeg_with_app1(
            _tiff([(0x010F, 2, 200, off(0x7FFFFFF0)), (0x0110, 2, 300, off(0xFFFFFF00))])
        ),
        # the GPS pointer is an ASCII string, not an IFD offset
        "gps-wrong-type": jpeg_with_app1(_tiff([(0x8825, 2, 4, ascii_ptr)])),
        # the GPS pointer points outside the block
        "gps-outside": jpeg_with_app1(_tiff([(0x8825, 4, 1, off(0x00FFFFFF))])),
        # an Exif sub-IFD whose maker note (and date) point outside the file
        "makernote-outside": jpeg_with_app1(
            _tiff(
                [(0x8769, 4, 1, off(26))],
                tail=struct.pack("<H", 2)
                + struct.pack("<HHI", 0x927C, 7, 5000)
                + off(0x7FFF0000)
                + struct.pack("<HHI", 0x9003, 2, 20)
                + off(0x7FFF1000)
                + off(0),
            )
        ),  # fmt: skip
        # make and model of the wrong type (SHORT), a date of month 13
        "wrong-types": jpeg_with_app1(
            _tiff(
                [(0x010F, 3, 1, b"\x07\x00"), (0x0110, 3, 1, b"\x09\x00"), (0x8769, 4, 1, off(50))],
                tail=struct.pack("<H", 1)
                + struct.pack("<HHI", 0x9003, 2, 20)
                + off(68)
                + off(0)
                + b"2021:13:45 99:99:99\x00",
            )
        ),  # fmt: skip
    }


def face_image() -> Image.Image:
    """NASA's astronaut portrait (Eileen Collins), shipped inside scikit-image; its face is at
    about (180, 60)-(270, 175) of the 512 px image."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the face tests need scikit-image (a test dependency)")
    path = os.path.join(next(iter(spec.submodule_search_locations)), "data", "astronaut.png")
    with Image.open(path) as im:
        return im.convert("RGB")


#: the face's region of face_image(), with some hair and background around it
FACE_CROP = (140, 20, 300, 200)


def pasted_face(
    canvas=(320, 240), at=(200, 100), size=(80, 90), color=(120, 130, 140)
) -> tuple[Image.Image, tuple[float, float, float, float]]:
    """A flat canvas with the face pasted at `at`; also the pasted region, normalised."""
    im = Image.new("RGB", canvas, color)
    im.paste(face_image().crop(FACE_CROP).resize(size, Image.Resampling.LANCZOS), at)
    w, h = canvas
    return im, (at[0] / w, at[1] / h, (at[0] + size[0]) / w, (at[1] + size[1]) / h)


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **options)
    return buf.getvalue()
