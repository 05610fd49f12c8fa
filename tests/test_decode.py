"""The guarded decoder against every hostile case, plus the size, mode and memory guarantees."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from PIL import Image

from tests.helpers import hostile
from vlpipe.images.decode import DEFAULT_MAX_PIXELS, DecodeError, FilterError, decode_image

MIN_SIDE = 224
pytestmark = pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("hostile")
    return root, hostile.make_hostile_corpus(root)


def test_corpus_covers_every_outcome(corpus):
    _, expected = corpus
    assert set(expected.values()) == {
        "ok",
        "truncated",
        "empty",
        "not-an-image",
        "corrupt",
        "too-many-pixels",
    }
    assert {n for n, e in expected.items() if e == "ok"} == set(hostile.SIZES)


@pytest.mark.parametrize("name", list(hostile._CASES))
def test_hostile_case(corpus, name):
    root, expected = corpus
    data = (root / name).read_bytes()
    if expected[name] != "ok":
        with pytest.raises((DecodeError, FilterError)) as info:
            decode_image(data, MIN_SIDE)
        assert info.value.reason == expected[name]
        message = str(info.value)
        assert message and "\n" not in message and "BytesIO" not in message
        return
    decoded = decode_image(data, MIN_SIDE)
    assert decoded.image.mode == "RGB"
    assert (decoded.width, decoded.height) == hostile.SIZES[name]
    w, h = decoded.image.size
    # reduced only while the short side stays >= MIN_SIDE, and never beyond 2x of it
    assert min(w, h) >= min(MIN_SIDE, decoded.width, decoded.height)
    assert min(w, h) < 2 * MIN_SIDE or min(w, h) == min(decoded.width, decoded.height)
    assert (w >= h) == (decoded.width >= decoded.height)  # same orientation as reported
    for (fx, fy), rgb in hostile.COLORS.get(name, []):
        got = decoded.image.getpixel((int(fx * w), int(fy * h)))
        assert max(abs(a - b) for a, b in zip(got, rgb, strict=True)) <= 3, (name, fx, fy, got)


@pytest.mark.parametrize("name", ["cmyk.jpg", "ycck.jpg"])
def test_cmyk_and_ycck_colours(corpus, name):
    root, _ = corpus
    decoded = decode_image((root / name).read_bytes(), MIN_SIDE).image
    reference = hostile._cmyk().convert("RGB")
    for xy in [(8, 24), (56, 24)]:  # one point in each half
        got, want = decoded.getpixel(xy), reference.getpixel(xy)
        assert max(abs(a - b) for a, b in zip(got, want, strict=True)) <= 8, (xy, got, want)


def test_animated_sources_really_are_animated(corpus):
    root, _ = corpus
    for name in ("animated.gif", "animated.webp"):
        with Image.open(root / name) as im:
            assert im.n_frames == 3


def test_huge_jpeg_is_drafted_then_reduced(corpus):
    root, _ = corpus
    decoded = decode_image((root / hostile.HUGE).read_bytes(), MIN_SIDE)
    assert (decoded.width, decoded.height) == (8000, 6000)
    assert MIN_SIDE <= min(decoded.image.size) < 2 * MIN_SIDE
    assert abs(decoded.image.size[0] / decoded.image.size[1] - 8000 / 6000) < 0.02


def test_huge_jpeg_memory_stays_bounded(corpus):
    """Peak RSS while decoding the 48 MP JPEG stays far below its 144 MB full-size RGB buffer."""
    root, _ = corpus
    code = (
        "import resource, sys, json\n"
        "from vlpipe.images.decode import decode_image\n"
        "data = open(sys.argv[1], 'rb').read()\n"
        "decode_image(open(sys.argv[2], 'rb').read(), 224)  # load the JPEG codec first\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "d = decode_image(data, 224)\n"
        "after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "print(json.dumps({'grew_kb': after - before, 'size': d.image.size}))\n"
    )
    small = root / "photo with spaces.jpg"
    out = subprocess.run(
        [sys.executable, "-c", code, str(root / hostile.HUGE), str(small)],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    report = json.loads(out.stdout)
    full_rgb_kb = 8000 * 6000 * 3 // 1024
    assert report["grew_kb"] < full_rgb_kb // 4, report


def test_draft_keeps_short_side_at_least_min_side():
    """libjpeg scales only while both sides stay >= the requested size: 1000x700 at 224 -> 1/2."""
    buf = io.BytesIO()
    Image.new("RGB", (1000, 700), (10, 120, 30)).save(buf, "JPEG")
    decoded = decode_image(buf.getvalue(), 224)
    assert (decoded.width, decoded.height) == (1000, 700)
    assert decoded.image.size == (500, 350)  # 1/2 by draft; 1/4 would make the short side 175
    assert decode_image(buf.getvalue(), 0).image.size == (1000, 700)  # 0: no reduction


def test_non_jpeg_is_box_reduced_too():
    buf = io.BytesIO()
    Image.new("RGB", (1200, 900), (10, 120, 30)).save(buf, "PNG")
    decoded = decode_image(buf.getvalue(), 224)
    assert (decoded.width, decoded.height) == (1200, 900)
    assert decoded.image.size == (300, 225)  # 900 // 224 = 4


def test_pixel_limit_is_configurable_per_call(corpus):
    root, _ = corpus
    data = (root / "progressive.jpg").read_bytes()  # 640x480
    with pytest.raises(FilterError) as info:
        decode_image(data, MIN_SIDE, max_pixels=640 * 480 - 1)
    assert info.value.reason == "too-many-pixels" and "640x480" in str(info.value)
    assert decode_image(data, MIN_SIDE, max_pixels=640 * 480).width == 640


def test_a_higher_limit_admits_what_pillow_alone_would_refuse(corpus):
    """A PNG declaring 200 MP (> 2x Pillow's default) is judged by our limit, not Pillow's."""
    bomb = hostile._png_declaring(20_000, 10_000)
    with pytest.raises(FilterError) as info:
        decode_image(bomb, MIN_SIDE)
    assert info.value.reason == "too-many-pixels"
    before = Image.MAX_IMAGE_PIXELS
    try:
        with pytest.raises(DecodeError) as info:  # now admitted by size; its data is too short
            decode_image(bomb, MIN_SIDE, max_pixels=250_000_000)
        assert info.value.reason in ("truncated", "corrupt")
        assert Image.MAX_IMAGE_PIXELS >= before  # the global limit is never lowered
    finally:
        Image.MAX_IMAGE_PIXELS = before


def test_default_limit_is_pillows():
    assert DEFAULT_MAX_PIXELS == 89_478_485


def test_concurrent_decodes_in_threads(corpus):
    """The pipeline decodes in a thread pool: results must not depend on interleaving."""
    root, expected = corpus
    names = [n for n in expected if n != hostile.HUGE] * 3
    results: dict[int, str] = {}

    def work(i: int, name: str) -> None:
        try:
            decode_image((root / name).read_bytes(), MIN_SIDE)
            results[i] = "ok"
        except (DecodeError, FilterError) as exc:
            results[i] = exc.reason

    threads = [threading.Thread(target=work, args=(i, n)) for i, n in enumerate(names)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [results[i] for i in range(len(names))] == [expected[n] for n in names]


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"\xff\xd8\xff", "corrupt"),  # a JPEG that stops after its first marker
        (b"GIF89a", "corrupt"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 30, "corrupt"),
        (bytes(range(256)) * 4, "not-an-image"),
        (b"   ", "not-an-image"),
    ],
)
def test_odd_bytes_never_raise_anything_but_decode_error(data, reason):
    with pytest.raises(DecodeError) as info:
        decode_image(data, MIN_SIDE)
    assert info.value.reason == reason


def test_unsupported_formats_are_refused_not_decoded():
    """EPS/PSD and friends are not opened at all (EPS would run Ghostscript on untrusted bytes)."""
    buf = io.BytesIO()
    Image.new("RGB", (20, 20)).save(buf, "PPM")
    with pytest.raises(DecodeError) as info:
        decode_image(buf.getvalue(), MIN_SIDE)
    assert info.value.reason == "not-an-image"
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n"
    with pytest.raises(DecodeError) as info:
        decode_image(eps, MIN_SIDE)
    assert info.value.reason == "not-an-image"


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_matches_pillows_exif_transpose(orientation):
    from PIL import ImageOps

    stored = Image.new("RGB", (80, 40), (200, 0, 0))
    stored.paste((0, 0, 200), (0, 0, 20, 10))  # a marker in one corner shows the rotation
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    stored.save(buf, "PNG", exif=exif.tobytes())  # lossless, so pixels compare exactly
    decoded = decode_image(buf.getvalue(), 0)
    reference = ImageOps.exif_transpose(Image.open(io.BytesIO(buf.getvalue()))).convert("RGB")
    assert (decoded.width, decoded.height) == reference.size
    assert decoded.image.tobytes() == reference.tobytes()
