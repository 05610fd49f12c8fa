"""Cheap duplicate signals computed at decode time: a 64-bit perceptual hash of the decoded
image and the SHA-256 of the bytes read, so finding copies never decodes an image twice.

The perceptual hash is the DCT hash of `imagehash.phash` (grayscale, 32x32, 2-D DCT-II, the 8x8
lowest frequencies against their median): a photo re-encoded, resized or lightly edited keeps
most of its 64 bits, while different photos differ in about half of them. It is written here
with NumPy (the DCT as two small matrix products) instead of depending on imagehash, which pulls
in SciPy and PyWavelets for this one function; `tests/test_fingerprints.py` checks that both
give the same bits.
"""

from __future__ import annotations

import hashlib

import numpy as np
from PIL import Image

HASH_SIZE = 8
SIDE = 4 * HASH_SIZE  # imagehash's highfreq_factor 4


def _dct_matrix(n: int) -> np.ndarray:
    """DCT-II as a matrix (SciPy's unnormalised scaling: comparisons need no normalisation)."""
    k = np.arange(n)[:, None]
    x = np.arange(n)[None, :]
    return 2.0 * np.cos(np.pi * (2 * x + 1) * k / (2 * n))


_DCT = _dct_matrix(SIDE)


def phash(image: Image.Image, box: tuple[float, float, float, float] | None = None) -> int:
    """The 64-bit perceptual hash of an image, as an unsigned integer (first bit highest).

    `box` (left, top, right, bottom as fractions of the frame) hashes only that part: the run
    passes the box inside a uniform border or letterbox (vlpipe.images.quality), so a padded
    copy hashes like its original."""
    if box is not None and box != (0.0, 0.0, 1.0, 1.0):
        w, h = image.size
        pixels = (round(box[0] * w), round(box[1] * h), round(box[2] * w), round(box[3] * h))
        if pixels[2] > pixels[0] and pixels[3] > pixels[1]:  # a tiny image may round to nothing
            image = image.crop(pixels)
    small = image.convert("L").resize((SIDE, SIDE), Image.Resampling.LANCZOS)
    pixels = np.asarray(small, dtype=np.float64)
    low = (_DCT @ pixels @ _DCT.T)[:HASH_SIZE, :HASH_SIZE]
    bits = (low > np.median(low)).ravel()
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()
