"""The copies a plain perceptual hash and a fixed cosine miss: a letterboxed copy, a crop to 80%
of each side (off centre) and a 3-degree rotation of real photos each cluster with their
original under `vlpipe dedup`'s default method (vlpipe-mini embeddings and hashes from a real
run), while different photos stay apart."""

from __future__ import annotations

import math
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from tests.helpers.paths import EXAMPLES, REPO
from vlpipe.dedup.run import dedup

#: example photos that get the three copies: ones whose 80% crop the rule before the verified
#: band (cosine 0.88 or 10 phash bits) left alone (cosine 0.84-0.88, 12-20 bits apart)
ORIGINALS = ("2101808682_0d66ef4a08.jpg", "210839948_bbd5bfa3b6.jpg", "2162564553_96de62c7e6.jpg")
OTHERS = 6  # further example photos, each different from every original


def letterbox(image: Image.Image) -> Image.Image:
    """Black bars to a 16:9 frame: beside a narrower photo, above and below a wider one."""
    w, h = image.size
    size = (max(w, round(h * 16 / 9)), h) if w < h * 16 / 9 else (w, round(w * 9 / 16))
    out = Image.new("RGB", size, (0, 0, 0))
    out.paste(image, ((size[0] - w) // 2, (size[1] - h) // 2))
    return out


def crop80(image: Image.Image) -> Image.Image:
    """The middle 80% of each side."""
    w, h = image.size
    return image.crop((round(0.1 * w), round(0.1 * h), round(0.9 * w), round(0.9 * h)))


def rotate3(image: Image.Image) -> Image.Image:
    """Rotated by 3 degrees, cropped to the largest centred rectangle without a wedge."""
    w, h = image.size
    a = math.radians(3)
    scale = 1 / (math.cos(a) + max(w / h, h / w) * math.sin(a))
    cw, ch = w * scale, h * scale
    box = (round((w - cw) / 2), round((h - ch) / 2), round((w + cw) / 2), round((h + ch) / 2))
    return image.rotate(3, Image.BICUBIC).crop(box)


COPIES = {"letterbox": letterbox, "crop80": crop80, "rotate3": rotate3}


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("transforms")
    src = root / "src"
    src.mkdir()
    originals = [EXAMPLES / name for name in ORIGINALS]
    others = sorted(EXAMPLES.glob("*.jpg"))[-OTHERS:]
    for photo in originals + others:
        shutil.copy(photo, src / photo.name)
    for photo in originals:
        with Image.open(photo) as im:
            for name, make in COPIES.items():
                make(im.convert("RGB")).save(src / f"{photo.stem}__{name}.jpg", quality=90)
    out = root / "out"
    cmd = [sys.executable, "-m", "vlpipe", "run", str(src), "--output", str(out), "--no-progress"]
    subprocess.run(cmd, cwd=REPO, check=True, capture_output=True)
    return {"out": out, "originals": originals, "others": others}


def cluster_of(out: Path) -> dict[str, str]:
    rows = pq.read_table(out / "dedup" / "clusters.parquet").to_pylist()
    parts = pq.read_table(out / "parts", columns=["image_id", "uri"]).to_pylist()
    name = {r["image_id"]: Path(r["uri"]).name for r in parts}
    return {name[r["image_id"]]: r["cluster_id"] for r in rows}


def test_letterbox_crop80_and_rotation_join_their_original_and_others_stay_apart(run):
    dedup(str(run["out"]))  # the default method and thresholds
    got = cluster_of(run["out"])
    for photo in run["originals"]:
        for name in COPIES:
            assert got[f"{photo.stem}__{name}.jpg"] == got[photo.name], (photo.name, name)
    clusters_of_originals = {got[p.name] for p in run["originals"]}
    assert len(clusters_of_originals) == len(ORIGINALS)  # the originals stay apart
    for photo in run["others"]:
        assert got[photo.name] not in clusters_of_originals, photo.name
