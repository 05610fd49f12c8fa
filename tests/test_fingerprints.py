"""The duplicate signals stored with every row: a perceptual hash equal to imagehash's, robust
to re-encoding and resizing, far apart for different photos; the SHA-256 of the bytes read."""

from __future__ import annotations

import hashlib
import io

import pytest
from PIL import Image, ImageEnhance

from tests.helpers.paths import EXAMPLES
from tests.helpers.reliability import config, read_output, tiny  # noqa: F401 - session fixture
from vlpipe.api import run_and_index as run
from vlpipe.images.fingerprints import hamming, phash

PHOTOS = sorted(EXAMPLES.glob("*.jpg"))[:12]


def test_the_same_bits_as_imagehash():
    imagehash = pytest.importorskip("imagehash", reason="imagehash is the reference here")
    for path in PHOTOS:
        with Image.open(path) as im:
            assert phash(im) == int(str(imagehash.phash(im)), 16), path.name


def _jpeg(image: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue()))


def test_copies_stay_close_and_different_photos_do_not():
    hashes = [phash(Image.open(p)) for p in PHOTOS]
    for path, h in zip(PHOTOS, hashes, strict=True):
        im = Image.open(path).convert("RGB")
        copies = [
            _jpeg(im, 30),
            im.resize((im.width // 2, im.height // 2)),
            ImageEnhance.Brightness(im).enhance(1.2),
            im.convert("L"),
        ]
        assert all(hamming(h, phash(c)) <= 8 for c in copies), path.name
    apart = [hamming(a, b) for i, a in enumerate(hashes) for b in hashes[i + 1 :]]
    assert min(apart) > 8 and sum(apart) / len(apart) > 20


def test_rows_carry_phash_and_sha256(tiny, tmp_path):  # noqa: F811
    src = tmp_path / "src"
    src.mkdir()
    for p in PHOTOS[:3]:
        (src / p.name).write_bytes(p.read_bytes())
    (src / "copy.jpg").write_bytes(PHOTOS[0].read_bytes())  # the same bytes, another uri
    assert run(config(tiny, src, tmp_path / "out")).ok
    rows, _ = read_output(str(tmp_path / "out"))
    by_name = {r["uri"].rsplit("/", 1)[1]: r for r in rows}
    for name, row in by_name.items():
        data = (src / name).read_bytes()
        assert row["sha256"] == hashlib.sha256(data).hexdigest()
        assert 0 <= row["phash"] < 2**64
    assert by_name["copy.jpg"]["sha256"] == by_name[PHOTOS[0].name]["sha256"]
    assert by_name["copy.jpg"]["phash"] == by_name[PHOTOS[0].name]["phash"]
