"""A generated hostile corpus: every kind of file a real bucket throws at the decoder.

`make_hostile_corpus(dir)` writes the files and returns {file name: expected outcome}, where the
outcome is "ok" or the DecodeError reason code. For the "ok" files, SIZES holds the (width, height)
the pipeline must report (after EXIF orientation) and COLORS the RGB colour expected at a few
points of the decoded image, given as fractions of its size (alpha on white, first frames, 16-bit
scaling, CMYK/YCCK conversion, rotation direction).

`make_hostile_manifest(dir, corpus)` writes a CSV manifest with missing, duplicate and bad uris and
null text over such a corpus. Unreadable-permission files are made by the tests themselves.
"""

from __future__ import annotations

import csv
import io
import random
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageChops, ImageDraw

RED, GREEN, BLUE, WHITE, BLACK = (220, 20, 20), (20, 200, 40), (30, 40, 220), (255,) * 3, (0,) * 3
HUGE = "huge 8000x6000.jpg"

#: (width, height) reported for every "ok" file, after EXIF orientation
SIZES: dict[str, tuple[int, int]] = {
    "cmyk.jpg": (64, 48),
    "ycck.jpg": (64, 48),
    "gray16.png": (256, 16),
    "palette-transparent.png": (60, 40),
    "la.png": (60, 40),
    "rgba.png": (60, 40),
    "animated.gif": (40, 30),
    "animated.webp": (40, 30),
    "exif-rotated.jpg": (300, 400),  # stored 400x300 with orientation 6
    "image.webp": (120, 90),
    "image.tiff": (120, 90),
    "image.bmp": (120, 90),
    "bilevel.png": (50, 30),
    "gray.jpg": (120, 90),
    "progressive.jpg": (640, 480),
    "one-pixel.png": (1, 1),
    "one-pixel.jpg": (1, 1),
    HUGE: (8000, 6000),
    "photo with spaces.jpg": (120, 90),
    "café 写真 ñ.png": (120, 90),
}

#: {name: [((x, y) as fractions of the decoded size, expected RGB), ...]}
COLORS: dict[str, list[tuple[tuple[float, float], tuple[int, int, int]]]] = {
    "palette-transparent.png": [((0.25, 0.5), WHITE), ((0.75, 0.5), RED)],
    "la.png": [((0.25, 0.5), WHITE), ((0.75, 0.5), BLACK)],
    "rgba.png": [((0.2, 0.5), WHITE), ((0.5, 0.5), (127, 127, 127)), ((0.85, 0.5), BLUE)],
    "animated.gif": [((0.5, 0.5), RED)],
    "animated.webp": [((0.5, 0.5), RED)],
    # orientation 6 turns the stored left half (red) into the top half
    "exif-rotated.jpg": [((0.5, 0.2), RED), ((0.5, 0.8), BLUE)],
    # 16-bit gradient: sample x*257 must become x, not clip to 255
    "gray16.png": [((64.5 / 256, 0.5), (64,) * 3), ((128.5 / 256, 0.5), (128,) * 3)],
    "bilevel.png": [((0.25, 0.5), BLACK), ((0.75, 0.5), WHITE)],
}


def make_hostile_corpus(root: Path | str) -> dict[str, str]:
    """Write every hostile case into `root`; {file name: "ok" or expected failure reason}."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    expected = {}
    for name, (make, outcome) in _CASES.items():
        path = root / name
        if not (name == HUGE and path.exists()):  # the big one is cached in the directory
            path.write_bytes(make())
        expected[name] = outcome
    return expected


def make_hostile_manifest(root: Path | str, corpus: Path | str) -> tuple[Path, dict]:
    """A CSV manifest in `root` over files of `corpus` with every kind of bad row.

    Returns (path, expected): expected["records"] listed inputs, ["input_failures"] rows without
    a uri, ["duplicates"] repeated uris, ["read_failures"] {uri as listed: ReadError reason},
    ["texts"] {uri: text or None}.
    """
    root, corpus = Path(root), Path(corpus).resolve()
    good = [corpus / "photo with spaces.jpg", corpus / "café 写真 ñ.png", corpus / "image.bmp"]
    missing = str(corpus / "no such file.jpg")
    rows = [
        (str(good[0]), "a photo, with a comma"),
        (str(good[1]), None),  # null text
        (str(good[2]), ""),  # empty text is no text
        (str(good[0]), "duplicate of the first row"),
        (None, "row without uri"),
        ("", "row with an empty uri"),
        (missing, None),
        (str(corpus), None),  # a directory, not a file
        ("nosuchprotocol://bucket/x.jpg", None),
    ]
    path = root / "hostile-manifest.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["Image", "alt"])
        for uri, text in rows:
            writer.writerow(["" if uri is None else uri, "" if text is None else text])
    expected = {
        "records": 6,
        "input_failures": 2,
        "duplicates": 1,
        "read_failures": {
            missing: "missing",
            str(corpus): "not-a-file",
            "nosuchprotocol://bucket/x.jpg": "bad-uri",
        },
        "texts": {str(good[0]): "a photo, with a comma", str(good[1]): None, str(good[2]): None},
    }
    return path, expected


# ---- builders ---------------------------------------------------------------------------------


def _encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def _photo(size: tuple[int, int], seed: int = 0) -> Image.Image:
    """Shapes plus noise, so JPEG data is mostly entropy-coded scan data (truncation hits it)."""
    rng = random.Random(seed)
    im = Image.effect_noise(size, 40).convert("RGB")
    draw = ImageDraw.Draw(im)
    for _ in range(8):
        x, y = rng.randrange(size[0]), rng.randrange(size[1])
        draw.ellipse((x, y, x + size[0] // 3, y + size[1] // 3), fill=RED if x % 2 else BLUE)
    return im


def _halves(size: tuple[int, int], mode: str, left, right) -> Image.Image:
    im = Image.new(mode, size, left)
    im.paste(right, (size[0] // 2, 0, size[0], size[1]))
    return im


def _truncated_jpeg() -> bytes:
    data = _encode(_photo((320, 240)), "JPEG", quality=90)
    return data[: len(data) * 6 // 10]


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    crc = zlib.crc32(kind + body) & 0xFFFFFFFF
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)


def _png_declaring(width: int, height: int) -> bytes:
    """A valid-looking PNG header for a gigantic RGB image, with a few bytes of pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def _gif_declaring(width: int, height: int) -> bytes:
    """A tiny GIF whose logical screen (the size Pillow reports) is patched to be gigantic."""
    data = bytearray(_encode(Image.new("P", (4, 4), 1), "GIF"))
    data[6:10] = struct.pack("<HH", width, height)
    return bytes(data)


def _cmyk() -> Image.Image:
    im = Image.new("CMYK", (64, 48), (0, 200, 230, 30))
    im.paste((200, 30, 0, 10), (0, 0, 32, 48))
    return im


def _cmyk_jpeg() -> bytes:
    return _encode(_cmyk(), "JPEG", quality=95)


def _ycck_jpeg() -> bytes:
    """Pillow cannot write YCCK, so: store YCbCr of the inverted CMY plus K as a 4-channel
    (Adobe-inverted) JPEG, then flip the Adobe APP14 transform flag from 0 (CMYK) to 2 (YCCK)."""
    c, m, y, k = _cmyk().split()
    ycc = Image.merge("RGB", (c, m, y)).convert("YCbCr").split()
    raw = Image.merge("CMYK", (*(ImageChops.invert(ch) for ch in ycc), k))
    data = bytearray(_encode(raw, "JPEG", quality=95))
    at = data.find(b"Adobe")
    assert at > 0 and data[at + 11] == 0, "no Adobe APP14 marker to patch"
    data[at + 11] = 2
    return bytes(data)


def _gray16_png() -> bytes:
    ramp = (np.arange(256, dtype=np.uint16) * 257)[None, :].repeat(16, axis=0)
    return _encode(Image.fromarray(ramp), "PNG")  # mode I;16


def _palette_transparent_png() -> bytes:
    im = _halves((60, 40), "P", 0, 1)
    im.putpalette([0, 0, 0, *RED] + [0] * 762)
    return _encode(im, "PNG", transparency=0)


def _la_png() -> bytes:
    return _encode(_halves((60, 40), "LA", (0, 0), (0, 255)), "PNG")


def _rgba_png() -> bytes:
    im = Image.new("RGBA", (60, 40), (*BLUE, 0))
    im.paste((0, 0, 0, 128), (20, 0, 40, 40))  # half-transparent black over white -> mid gray
    im.paste((*BLUE, 255), (40, 0, 60, 40))
    return _encode(im, "PNG")


def _animated(fmt: str) -> bytes:
    frames = [Image.new("RGB", (40, 30), c) for c in (RED, GREEN, BLUE)]
    if fmt == "GIF":
        frames = [f.convert("P", palette=Image.Palette.ADAPTIVE) for f in frames]
    extra = {"lossless": True} if fmt == "WEBP" else {}
    return _encode(
        frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, loop=0, **extra
    )


def _exif_rotated_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    return _encode(_halves((400, 300), "RGB", RED, BLUE), "JPEG", exif=exif.tobytes())


def _huge_jpeg() -> bytes:
    """A real 8000x6000 JPEG, made by upscaling a small picture (encoding takes about a second)."""
    small = _photo((160, 120), seed=7).resize((8000, 6000), Image.Resampling.NEAREST)
    return _encode(small, "JPEG", quality=40)


def _bilevel_png() -> bytes:
    return _encode(_halves((50, 30), "1", 0, 1), "PNG")


def _corrupt_png() -> bytes:
    data = bytearray(_encode(_photo((64, 48)), "PNG"))
    start = data.find(b"IDAT") + 4
    data[start : start + 40] = b"\xff" * 40  # garbage inside the compressed stream
    return bytes(data)


def _img(fmt: str, size=(120, 90), **kw) -> Callable[[], bytes]:
    return lambda: _encode(_photo(size), fmt, **kw)


_CASES: dict[str, tuple[Callable[[], bytes], str]] = {
    "truncated.jpg": (_truncated_jpeg, "truncated"),
    "empty.jpg": (lambda: b"", "empty"),
    "page saved as.jpg": (
        lambda: b"<!DOCTYPE html>\n<html><body><h1>403 Forbidden</h1></body></html>\n",
        "not-an-image",
    ),
    "notes.jpg": (lambda: "plain text, not a picture: café 写真\n".encode() * 5, "not-an-image"),
    "corrupt.png": (_corrupt_png, "corrupt"),
    "bomb.png": (lambda: _png_declaring(100_000, 100_000), "too-many-pixels"),
    "bomb-just-over-limit.png": (lambda: _png_declaring(10_000, 9_000), "too-many-pixels"),
    "bomb.gif": (lambda: _gif_declaring(65_535, 65_535), "too-many-pixels"),
    "cmyk.jpg": (_cmyk_jpeg, "ok"),
    "ycck.jpg": (_ycck_jpeg, "ok"),
    "gray16.png": (_gray16_png, "ok"),
    "palette-transparent.png": (_palette_transparent_png, "ok"),
    "la.png": (_la_png, "ok"),
    "rgba.png": (_rgba_png, "ok"),
    "animated.gif": (lambda: _animated("GIF"), "ok"),
    "animated.webp": (lambda: _animated("WEBP"), "ok"),
    "exif-rotated.jpg": (_exif_rotated_jpeg, "ok"),
    "image.webp": (_img("WEBP"), "ok"),
    "image.tiff": (_img("TIFF"), "ok"),
    "image.bmp": (_img("BMP"), "ok"),
    "bilevel.png": (_bilevel_png, "ok"),
    "gray.jpg": (lambda: _encode(_photo((120, 90)).convert("L"), "JPEG"), "ok"),
    "progressive.jpg": (_img("JPEG", (640, 480), progressive=True), "ok"),
    "one-pixel.png": (lambda: _encode(Image.new("RGB", (1, 1), RED), "PNG"), "ok"),
    "one-pixel.jpg": (lambda: _encode(Image.new("RGB", (1, 1), RED), "JPEG"), "ok"),
    HUGE: (_huge_jpeg, "ok"),
    "photo with spaces.jpg": (_img("JPEG"), "ok"),
    "café 写真 ñ.png": (_img("PNG"), "ok"),
}
