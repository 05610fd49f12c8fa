"""A deterministic near-duplicate set: copies of real photos made the ways the web makes them,
plus different photos of the same kind of scene as hard negatives.

For each original, one copy per TRANSFORM: re-encoded at JPEG quality 12, resized to 40% of
its sides, cropped by 10-20% of each side (off centre), overlaid with a caption bar and a logo,
brightness and contrast shifted, converted to grayscale; and the ones plain hashes miss: padded
(a uniform border of 6-15% a side, or letterboxed to 1:1 or 16:9, black, white or grey), cropped
to 80% of each side (off centre), rotated by 2-5 degrees either way (the wedges cropped away, as
a straightening tool does). Hard negatives are other photos whose
five reference captions are the most alike (TF-IDF cosine) to the original's: the same kind of
scene, a different photo. `truth.json` gives each file's group (an original and its copies
share one) and, for copies, the transform.
"""

from __future__ import annotations

import csv
import io
import json
import math
import random
import re
from collections import Counter
from pathlib import Path

from PIL import Image, ImageDraw, ImageEnhance, ImageFont

TRANSFORMS = (
    "jpeg",
    "resize",
    "crop",
    "overlay",
    "tone",
    "grayscale",
    "border",
    "crop80",
    "rotate",
)
FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf"


def make_copy(image: Image.Image, transform: str, rng: random.Random) -> tuple[Image.Image, dict]:
    """The copy and how to save it (format, quality)."""
    image = image.convert("RGB")
    w, h = image.size
    if transform == "jpeg":
        return image, {"format": "JPEG", "quality": 12}
    if transform == "resize":
        return image.resize((max(1, round(w * 0.4)), max(1, round(h * 0.4))), Image.BICUBIC), {
            "format": "JPEG", "quality": 85}  # fmt: skip
    if transform == "crop":
        cw, ch = rng.uniform(0.10, 0.20), rng.uniform(0.10, 0.20)  # share of each side removed
        left, top = rng.uniform(0, cw) * w, rng.uniform(0, ch) * h
        box = (round(left), round(top), round(left + (1 - cw) * w), round(top + (1 - ch) * h))
        return image.crop(box), {"format": "JPEG", "quality": 90}
    if transform == "overlay":
        return _overlay(image, rng), {"format": "JPEG", "quality": 90}
    if transform == "tone":
        out = ImageEnhance.Brightness(image).enhance(rng.choice((0.7, 1.35)))
        return ImageEnhance.Contrast(out).enhance(rng.choice((0.7, 1.4))), {
            "format": "JPEG", "quality": 90}  # fmt: skip
    if transform == "grayscale":
        return image.convert("L"), {"format": "JPEG", "quality": 90}
    if transform == "border":
        return _pad(image, rng), {"format": "JPEG", "quality": 90}
    if transform == "crop80":
        left, top = rng.uniform(0, 0.2) * w, rng.uniform(0, 0.2) * h
        box = (round(left), round(top), round(left + 0.8 * w), round(top + 0.8 * h))
        return image.crop(box), {"format": "JPEG", "quality": 90}
    if transform == "rotate":
        return _rotate(image, rng.choice((-1, 1)) * rng.uniform(2, 5)), {
            "format": "JPEG", "quality": 90}  # fmt: skip
    raise ValueError(transform)


def _pad(image: Image.Image, rng: random.Random) -> Image.Image:
    """A uniform border on every side, or letterbox bars to a 1:1 or 16:9 frame."""
    w, h = image.size
    fill = rng.choice(((0, 0, 0), (255, 255, 255), (128, 128, 128)))
    if rng.random() < 0.5:
        side = rng.uniform(0.06, 0.15)
        size, at = (
            (round(w * (1 + 2 * side)), round(h * (1 + 2 * side))),
            (round(w * side), round(h * side)),
        )
    else:
        ratio = rng.choice((1.0, 16 / 9))
        size = (max(w, round(h * ratio)), max(h, round(w / ratio)))
        if size == (w, h):
            size = (w, round(h * 1.3))
        at = ((size[0] - w) // 2, (size[1] - h) // 2)
    out = Image.new("RGB", size, fill)
    out.paste(image, at)
    return out


def _rotate(image: Image.Image, degrees: float) -> Image.Image:
    """Rotated, then cropped to the largest centred rectangle of the same aspect with no wedge."""
    w, h = image.size
    out = image.rotate(degrees, Image.BICUBIC, expand=False)
    a = math.radians(abs(degrees))
    scale = 1 / (math.cos(a) + max(w / h, h / w) * math.sin(a))
    cw, ch = w * scale, h * scale
    box = (round((w - cw) / 2), round((h - ch) / 2), round((w + cw) / 2), round((h + ch) / 2))
    return out.crop(box)


def _overlay(image: Image.Image, rng: random.Random) -> Image.Image:
    """A caption bar with text at the bottom and a logo in a corner, as re-posts carry."""
    out = image.copy()
    w, h = out.size
    draw = ImageDraw.Draw(out, "RGBA")
    bar = round(h * 0.12)
    draw.rectangle((0, h - bar, w, h), fill=(0, 0, 0, 150))
    font = _font(max(10, round(bar * 0.6)))
    draw.text((round(w * 0.03), h - bar + round(bar * 0.15)), "when your dog sees the mailman",
              fill=(255, 255, 255, 255), font=font)  # fmt: skip
    side = round(min(w, h) * 0.16)
    x = rng.choice((round(w * 0.03), w - side - round(w * 0.03)))
    y = round(h * 0.04)
    draw.ellipse((x, y, x + side, y + side), fill=(230, 40, 40, 200))
    draw.text((x + side * 0.22, y + side * 0.2), "V", fill=(255, 255, 255, 255),
              font=_font(round(side * 0.6)))  # fmt: skip
    return out


def _font(size: int):
    try:
        return ImageFont.truetype(FONT, size)
    except OSError:
        return ImageFont.load_default()


def save(image: Image.Image, path: Path, how: dict) -> None:
    buf = io.BytesIO()
    image.save(buf, how["format"], quality=how.get("quality", 90))
    path.write_bytes(buf.getvalue())


def build(flickr: Path, split: str, n: int, out: Path, seed: int = 0) -> dict:
    """Write the set to `out` (images/ and truth.json) from `n` originals of `split`; returns
    the truth: {file: {"group": g, "transform": t or None, "role": original|copy|negative}}."""
    rng = random.Random(seed)
    names = _split(flickr, split)
    captions = _captions(flickr, set(names))
    originals = sorted(rng.sample(names, n))
    negatives = _hard_negatives(originals, names, captions)
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    truth: dict[str, dict] = {}
    for g, name in enumerate(originals):
        source = flickr / "images" / name
        (images / name).write_bytes(source.read_bytes())
        truth[name] = {"group": g, "transform": None, "role": "original"}
        with Image.open(source) as im:
            im.load()
            for t in TRANSFORMS:
                copy, how = make_copy(im, t, rng)
                file = f"{Path(name).stem}__{t}.jpg"
                save(copy, images / file, how)
                truth[file] = {"group": g, "transform": t, "role": "copy"}
    for g, name in enumerate(negatives, start=len(originals)):
        (images / name).write_bytes((flickr / "images" / name).read_bytes())
        truth[name] = {"group": g, "transform": None, "role": "negative"}
    (out / "truth.json").write_text(json.dumps(truth, indent=0))
    return truth


def _split(flickr: Path, split: str) -> list[str]:
    with open(flickr / "splits.csv", newline="") as f:
        return sorted(r["image"] for r in csv.DictReader(f) if r["split"] == split)


def _captions(flickr: Path, names: set[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    with open(flickr / "captions.csv", newline="") as f:
        for r in csv.DictReader(f):
            if r["image"] in names:
                out.setdefault(r["image"], []).append(r["caption"])
    return out


STOP = set("a an the is are of in on at and with to his her their its while for by from".split())


def _hard_negatives(originals: list[str], names: list[str], captions: dict) -> list[str]:
    """For each original, the other photo of the split whose captions are most alike."""
    words = {n: Counter(w for c in captions.get(n, []) for w in re.findall(r"[a-z]+", c.lower())
                        if w not in STOP) for n in names}  # fmt: skip
    df = Counter(w for c in words.values() for w in c)
    idf = {w: math.log(len(names) / d) for w, d in df.items()}

    def vec(n):
        v = {w: c * idf[w] for w, c in words[n].items()}
        norm = math.sqrt(sum(x * x for x in v.values())) or 1.0
        return {w: x / norm for w, x in v.items()}

    vecs = {n: vec(n) for n in names}
    taken = set(originals)
    out = []
    for o in originals:
        vo = vecs[o]
        best = max((n for n in names if n not in taken),
                   key=lambda n: sum(x * vecs[n].get(w, 0.0) for w, x in vo.items()))  # fmt: skip
        taken.add(best)
        out.append(best)
    return out
