"""Quality signals on real photos and on copies made to have each signal (vlpipe.images.quality)."""

from __future__ import annotations

import pytest
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

from tests.helpers.paths import EXAMPLES
from vlpipe.images.quality import COLUMNS, FLAGS, flagged, quality


def photos(n: int = 6) -> list[Image.Image]:
    out = []
    for path in sorted(EXAMPLES.glob("*.jpg"))[:n]:
        with Image.open(path) as im:
            out.append(im.convert("RGB"))
    return out


@pytest.fixture(scope="module")
def originals():
    return [(im, quality(im)) for im in photos()]


def test_blurred_copy_is_less_sharp(originals):
    for im, q in originals:
        blurred = quality(im.filter(ImageFilter.GaussianBlur(3)))
        assert blurred.sharpness < q.sharpness / 10
        assert flagged("blurry", blurred.columns())[0] and not flagged("blurry", q.columns())[0]


def test_darkened_copy_is_darker_and_brightened_brighter(originals):
    for im, q in originals:
        dark = quality(ImageEnhance.Brightness(im).enhance(0.2))
        assert dark.brightness < q.brightness * 0.3
        assert dark.brightness < FLAGS["dark"][0][2] and flagged("dark", dark.columns())[0]
        assert not flagged("blurry", dark.columns())[0]  # dark, not out of focus
        bright = quality(Image.blend(im, Image.new("RGB", im.size, "white"), 0.9))
        assert bright.brightness > max(q.brightness, FLAGS["bright"][0][2])


def test_flat_copy_is_low_entropy_and_low_contrast(originals):
    for im, q in originals:
        flat = quality(Image.blend(im, Image.new("RGB", im.size, (120, 110, 100)), 0.97))
        assert flat.entropy < 3.0 <= q.entropy
        assert flat.contrast < q.contrast / 10
        assert quality(Image.new("RGB", (300, 200), (40, 90, 200))).entropy == 0.0


def test_grayscale_and_colorfulness(originals):
    for im, q in originals:
        gray = quality(ImageOps.grayscale(im).convert("RGB"))
        assert gray.grayscale and not q.grayscale
        assert gray.colorfulness < 0.01 < q.colorfulness
    sepia = ImageOps.colorize(ImageOps.grayscale(originals[0][0]), "#3a2410", "#f0d9b0")
    assert not quality(sepia).grayscale  # tinted is not gray


def test_padded_copy_has_its_border(originals):
    for im, q in originals:
        w, h = im.size
        padded = Image.new("RGB", (int(w * 1.5), int(h * 1.5)), "black")
        padded.paste(im, (w // 4, h // 4))
        p = quality(padded)
        inner = (w * h) / (padded.width * padded.height)
        assert p.border == pytest.approx(1 - inner, abs=0.03)
        assert q.border < 0.1
        assert p.inner == pytest.approx((1 / 6, 1 / 6, 5 / 6, 5 / 6), abs=0.02)
        letterbox = Image.new("RGB", (w, int(h * 1.6)), "white")
        letterbox.paste(im, (0, int(h * 0.3)))
        lb = quality(letterbox)
        assert lb.border == pytest.approx(1 - 1 / 1.6, abs=0.03)
        assert lb.inner[0] == 0.0 and lb.inner[2] == 1.0  # bars top and bottom only
    flat = quality(Image.new("RGB", (64, 64), "gray"))
    assert flat.border == 1.0 and flat.inner == (0.0, 0.0, 1.0, 1.0)


def test_values_in_documented_ranges(originals):
    for _, q in originals:
        row = q.columns()
        assert set(row) == set(COLUMNS)
        assert row["sharpness"] >= 0
        assert 0 <= row["brightness"] <= 1 and 0 <= row["contrast"] <= 0.5
        assert 0 <= row["colorfulness"] <= 1.8 and 0 <= row["entropy"] <= 8
        assert 0 <= row["border"] <= 1 and isinstance(row["grayscale"], bool)
    tiny = quality(Image.new("RGB", (1, 1), "red"))  # the smallest image still has signals
    assert tiny.sharpness == 0.0 and tiny.border == 1.0
