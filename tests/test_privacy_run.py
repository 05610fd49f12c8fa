"""Privacy through real runs (tiny models): metadata columns and --where on them, WebDataset
output that drops location and serial losslessly (or keeps them under --keep-metadata), faces
found and blurred in exports and thumbnails, the summary's counts, and a detector that cannot
load refused at planning."""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers.photos import (
    MODEL,
    PRIVATE_BYTES,
    encode,
    hostile_exif,
    pasted_face,
    plain_jpeg,
    private_photo,
)
from tests.helpers.reliability import config, read_output, tiny  # noqa: F401 - session fixture
from vlpipe.api import run_and_index as run
from vlpipe.images.blur import pixel_box
from vlpipe.images.decode import decode_image

REPO = Path(__file__).resolve().parents[1]


def tar_members(out: Path) -> dict[str, bytes]:
    members = {}
    for path in sorted((out / "wds").glob("*.tar")):
        with tarfile.open(path) as tar:
            for m in tar.getmembers():
                members[m.name] = tar.extractfile(m).read()
    return members


def sample(members: dict[str, bytes], image_id: str) -> tuple[bytes, dict]:
    image = next(v for k, v in members.items() if k.startswith(image_id + ".")
                 and not k.endswith((".json", ".txt", ".npy")))  # fmt: skip
    return image, json.loads(members[f"{image_id}.json"])


def same_picture(a: bytes, b: bytes) -> bool:
    """Identical pixels and the same displayed size (orientation applied as readers do)."""
    da, db = decode_image(a, 0), decode_image(b, 0)
    return (da.width, da.height) == (db.width, db.height) and np.array_equal(
        np.asarray(da.image), np.asarray(db.image)
    )


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("privacy-src")
    (src / "private.jpg").write_bytes(private_photo("JPEG"))
    (src / "private.png").write_bytes(private_photo("PNG"))
    (src / "plain.jpg").write_bytes(plain_jpeg())
    for name, data in hostile_exif().items():
        (src / f"hostile-{name}.jpg").write_bytes(data)
    return src


def by_name(rows: list[dict]) -> dict[str, dict]:
    return {Path(r["uri"]).name: r for r in rows}


def test_webdataset_output_drops_location_and_serial_keeping_pixels(tiny, corpus, tmp_path):  # noqa: F811
    out = tmp_path / "out"
    summary = run(config(tiny, corpus, out, output_format="webdataset", build_index=True))
    assert summary.ok and summary.failed == 0  # hostile EXIF fails no image
    rows = by_name(read_output(str(out))[0])
    assert summary.with_location == 2 and summary.with_faces is None
    assert "privacy: 2 images hold a location" in "\n".join(summary.lines())
    # the columns, from the header of the bytes read
    for name in ("private.jpg", "private.png"):
        assert rows[name]["exif_gps"] is True and rows[name]["camera"] == MODEL
        assert rows[name]["taken_at"] == dt.datetime(2021, 7, 4, 15, 30, 12)
    assert (rows["plain.jpg"]["exif_gps"], rows["plain.jpg"]["camera"]) == (False, None)
    for name, row in rows.items():
        if name.startswith("hostile-") and name != "hostile-wrong-types.jpg":
            assert (row["exif_gps"], row["camera"], row["taken_at"]) == (None, None, None)
    # the exported bytes
    members = tar_members(out)
    for name in ("private.jpg", "private.png"):
        original = (corpus / name).read_bytes()
        image, meta = sample(members, rows[name]["image_id"])
        assert not any(p in image for p in PRIVATE_BYTES)
        assert same_picture(image, original)
        assert Image.open(io.BytesIO(image)).getexif().get(0x0112) == 6
        assert meta["export_metadata"] == "stripped"
        assert meta["export_sha256"] == hashlib.sha256(image).hexdigest()
        assert meta["sha256"] == rows[name]["sha256"] == hashlib.sha256(original).hexdigest()
    plain, meta = sample(members, rows["plain.jpg"]["image_id"])
    assert plain == (corpus / "plain.jpg").read_bytes() and meta["export_metadata"] == "unchanged"
    # filterable like any column
    from vlpipe.search.searcher import Searcher

    hits = Searcher.open(str(out)).search_text(["a photo"], 50, where="exif_gps = true")[0]
    assert sorted(Path(h.uri).name for h in hits) == ["private.jpg", "private.png"]


def test_keep_metadata_exports_the_bytes_as_read(tiny, corpus, tmp_path):  # noqa: F811
    out = tmp_path / "out"
    assert run(config(tiny, corpus, out, output_format="webdataset", keep_metadata=True)).ok
    rows = by_name(read_output(str(out))[0])
    members = tar_members(out)
    for name in ("private.jpg", "private.png", "hostile-gps-wrong-type.jpg"):
        image, meta = sample(members, rows[name]["image_id"])
        assert image == (corpus / name).read_bytes() and meta["export_metadata"] == "kept"
    image, _ = sample(members, rows["private.jpg"]["image_id"])
    assert all(p in image for p in PRIVATE_BYTES)


def face_corpus(src: Path) -> dict[str, tuple]:
    src.mkdir()
    face, region = pasted_face((320, 240), (200, 100), (80, 90))
    (src / "face.png").write_bytes(encode(face, "PNG"))
    (src / "flat.png").write_bytes(encode(Image.new("RGB", (320, 240), (120, 130, 140)), "PNG"))
    return {"face.png": region}


def inside(size, boxes) -> np.ndarray:
    mask = np.zeros((size[1], size[0]), dtype=bool)
    for box in boxes:
        left, top, right, bottom = pixel_box(box, *size)
        mask[top:bottom, left:right] = True
    return mask


def test_faces_are_found_and_blurred_in_exports_and_thumbnails(tiny, tmp_path):  # noqa: F811
    src, out = tmp_path / "src", tmp_path / "out"
    regions = face_corpus(src)
    cfg = config(tiny, src, out, output_format="webdataset", blur_faces=True, thumbnail_px=320)
    assert cfg.detect_faces  # --blur-faces implies --detect-faces
    summary = run(cfg)
    assert summary.ok and summary.with_faces == 1
    assert "1 show faces" in "\n".join(summary.lines())
    rows = by_name(read_output(str(out))[0])
    assert rows["flat.png"]["faces"] == 0 and rows["flat.png"]["face_boxes"] == []
    face = rows["face.png"]
    assert face["faces"] == 1
    (box,) = face["face_boxes"]
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    region = regions["face.png"]
    assert region[0] < cx < region[2] and region[1] < cy < region[3]
    original = np.asarray(Image.open(src / "face.png").convert("RGB")).astype(int)
    mask = inside((320, 240), face["face_boxes"])
    # the export: differs from the original only inside the box
    image, meta = sample(tar_members(out), face["image_id"])
    assert meta["export_metadata"] == "blurred"
    exported = np.asarray(Image.open(io.BytesIO(image)).convert("RGB")).astype(int)
    assert np.array_equal(exported[~mask], original[~mask])
    assert np.abs(exported[mask] - original[mask]).mean() > 5
    # the stored thumbnail (JPEG, so compare loosely): blurred inside, the same outside
    # (made from the image as decoded for the model, which may be smaller than the file)
    thumb_image = Image.open(io.BytesIO(face["thumbnail"])).convert("RGB")
    thumb = np.asarray(thumb_image).astype(int)
    small = np.asarray(Image.open(src / "face.png").convert("RGB").resize(thumb_image.size))
    changed = np.abs(thumb - small.astype(int))
    mask = inside(thumb_image.size, face["face_boxes"])
    assert changed[mask].mean() > 3 * changed[~mask].mean()
    flat, meta = sample(tar_members(out), rows["flat.png"]["image_id"])
    assert flat == (src / "flat.png").read_bytes() and meta["export_metadata"] == "unchanged"


def test_a_detector_that_cannot_load_is_one_line_at_planning(tmp_path):
    fake = tmp_path / "site" / "facenet_pytorch"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("")  # the package without its weight files
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.jpg").write_bytes(plain_jpeg())
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), str(REPO)])}
    proc = subprocess.run(
        [sys.executable, "-m", "vlpipe", "run", str(src), "--output", str(tmp_path / "out"),
         "--detect-faces", "--no-progress"],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "--detect-faces" in lines[0] and "facenet-pytorch" in lines[0]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out" / "parts").exists()


@pytest.mark.parametrize("detect_in_run", [True, False])
def test_serve_blur_faces_blurs_the_thumbnails_it_serves(tiny, tmp_path, detect_in_run):  # noqa: F811
    pytest.importorskip("starlette", reason="needs the 'serve' extra")
    from starlette.testclient import TestClient

    from vlpipe.search.searcher import Searcher
    from vlpipe.serve.app import create_app
    from vlpipe.serve.blurred import VARIANT, FaceBlur
    from vlpipe.serve.thumbnails import ThumbnailCache

    src, out = tmp_path / "src", tmp_path / "out"
    face_corpus(src)
    assert run(config(tiny, src, out, detect_faces=detect_in_run, build_index=True)).ok
    rows = by_name(read_output(str(out))[0])
    searcher = Searcher.open(str(out))
    blur = FaceBlur(searcher)
    assert blur.stored_boxes is detect_in_run  # else faces are looked for on the thumbnail
    cache = tmp_path / "cache"  # shared with a plain server: the blurred ones are kept apart
    plain = ThumbnailCache(cache, size=320)
    blurred = ThumbnailCache(cache, size=320, finish=blur, variant=VARIANT)
    shown = {}
    for name, thumbs in (("plain", plain), ("blurred", blurred)):
        with TestClient(create_app(searcher, thumbs), raise_server_exceptions=False) as client:
            for file, row in rows.items():
                got = client.get(f"/thumb/{row['image_id']}")
                assert got.status_code == 200
                shown[name, file] = np.asarray(Image.open(io.BytesIO(got.content))).astype(int)
    assert np.array_equal(shown["plain", "flat.png"], shown["blurred", "flat.png"])
    changed = np.abs(shown["plain", "face.png"] - shown["blurred", "face.png"])
    _, region = pasted_face((320, 240), (200, 100), (80, 90))
    mask = inside((320, 240), [region])
    assert changed[mask].mean() > 5 and changed[mask].mean() > 5 * changed[~mask].mean()
