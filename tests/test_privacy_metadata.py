"""Metadata columns (vlpipe.images.metadata) and lossless stripping (vlpipe.images.strip,
vlpipe.images.export) on photos made by tests/helpers/photos.py: real EXIF written by Pillow,
hostile EXIF written byte by byte."""

from __future__ import annotations

import datetime as dt
import hashlib
import io

import numpy as np
import pytest
from PIL import Image

from tests.helpers.photos import (
    MODEL,
    PRIVATE_BYTES,
    encode,
    hostile_exif,
    picture,
    plain_jpeg,
    private_photo,
)
from vlpipe.images.decode import decode_image
from vlpipe.images.export import ExportPolicy, export_image
from vlpipe.images.metadata import PhotoFacts, read_facts
from vlpipe.images.strip import StripError, orientation_of, strip_metadata

FORMATS = ["JPEG", "PNG", "WEBP"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_columns_read_from_the_header(fmt):
    facts = read_facts(private_photo(fmt))
    assert facts == PhotoFacts(True, MODEL, dt.datetime(2021, 7, 4, 15, 30, 12))


def test_a_photo_without_metadata_has_no_location():
    assert read_facts(plain_jpeg()) == PhotoFacts(False, None, None)
    assert read_facts(b"not an image") == PhotoFacts(None, None, None)


@pytest.mark.parametrize("name", sorted(hostile_exif()))
def test_hostile_exif_gives_null_columns_and_a_decodable_image(name):
    data = hostile_exif()[name]
    facts = read_facts(data)
    assert facts.camera is None and facts.taken_at is None
    if name != "wrong-types":  # a well-formed block with wrong-typed values: only those null
        assert facts.exif_gps is None
    assert decode_image(data, 0).image.size == (96, 64)
    exported = export_image(data, "JPEG", ExportPolicy())  # never raises
    assert decode_image(exported.data, 0).image.size == (96, 64)


def pixels_and_size(data: bytes) -> tuple[np.ndarray, tuple[int, int]]:
    decoded = decode_image(data, 0)  # EXIF orientation applied, as every reader does
    return np.asarray(decoded.image), (decoded.width, decoded.height)


@pytest.mark.parametrize("fmt", FORMATS)
def test_stripping_drops_location_and_serial_and_keeps_pixels_and_orientation(fmt):
    data = private_photo(fmt)
    assert read_facts(data).exif_gps  # (PNG compresses its XMP: the bytes do not show it)
    out = strip_metadata(data, fmt)
    assert not any(p in out for p in PRIVATE_BYTES)
    assert read_facts(out) == PhotoFacts(False, None, None)
    assert Image.open(io.BytesIO(out)).getexif().get(0x0112) == 6  # orientation kept
    before, size = pixels_and_size(data)
    after, size_after = pixels_and_size(out)
    assert size == size_after == (64, 96)  # stored 96x64, displayed upright as 64x96
    assert np.array_equal(before, after)


def test_jpeg_strip_keeps_the_compressed_data_byte_for_byte():
    data = private_photo("JPEG")
    out = strip_metadata(data, "JPEG")
    scan = data.index(b"\xff\xda")
    assert out.endswith(data[scan : data.index(b"\xff\xd9", scan) + 2])  # trailer dropped
    assert len(out) < len(data)


def test_nothing_to_strip_returns_the_same_bytes():
    for fmt in FORMATS + ["GIF", "BMP"]:
        data = encode(picture(), fmt)
        assert strip_metadata(data, fmt) is data


def test_orientation_only_exif_for_upright_photos_is_dropped_entirely():
    buf = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112], exif[0x0110] = 1, "Pixel 7"
    picture().save(buf, "JPEG", exif=exif)
    out = strip_metadata(buf.getvalue(), "JPEG")
    assert b"Exif" not in out and b"Pixel" not in out


def test_broken_containers_raise_strip_error_and_export_reencodes():
    data = private_photo("JPEG")
    broken = data[:4] + b"\xff\xff" + data[6:]  # the first segment's length runs past the end
    with pytest.raises(StripError):
        strip_metadata(broken[:200], "JPEG")
    tiff = encode(picture(), "TIFF", exif=Image.open(io.BytesIO(data)).getexif())
    with pytest.raises(StripError):
        strip_metadata(tiff, "TIFF")
    exported = export_image(tiff, "TIFF", ExportPolicy())
    assert exported.metadata == "reencoded" and exported.format == "PNG"
    assert read_facts(exported.data) == PhotoFacts(False, None, None)
    assert orientation_of(b"II*\x00" + b"\xff" * 4) is None


@pytest.mark.parametrize("fmt", FORMATS)
def test_export_policy_strips_by_default_and_keeps_bytes_when_asked(fmt):
    data = private_photo(fmt)
    stripped = export_image(data, fmt, ExportPolicy())
    assert stripped.metadata == "stripped" and not any(p in stripped.data for p in PRIVATE_BYTES)
    assert stripped.sha256 == hashlib.sha256(stripped.data).hexdigest()
    kept = export_image(data, fmt, ExportPolicy(keep_metadata=True))
    assert kept.data == data and kept.metadata == "kept"
    assert kept.sha256 == hashlib.sha256(data).hexdigest() != stripped.sha256
