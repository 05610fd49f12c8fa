"""`vlpipe curate --format webdataset` through the same export policy as `vlpipe run`: location
and serial dropped with identical pixels and orientation, kept under --keep-metadata, faces
blurred only inside the run's boxes with --blur-faces; the counts in curate.json and the report."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from tests.helpers.photos import PRIVATE_BYTES, encode, pasted_face, plain_jpeg, private_photo
from tests.helpers.reliability import config, tiny  # noqa: F401 - session fixture
from vlpipe.api import run_and_index as run
from vlpipe.curate.run import curate
from vlpipe.errors import VlpipeError
from vlpipe.images.blur import pixel_box
from vlpipe.images.decode import decode_image


@pytest.fixture(scope="module")
def made(tiny, tmp_path_factory):  # noqa: F811
    root = tmp_path_factory.mktemp("privacy-curate")
    src = root / "src"
    src.mkdir()
    (src / "private.jpg").write_bytes(private_photo("JPEG"))
    (src / "plain.jpg").write_bytes(plain_jpeg())
    face, _ = pasted_face((320, 240), (200, 100), (80, 90))
    (src / "face.png").write_bytes(encode(face, "PNG"))
    (src / "flat.png").write_bytes(encode(Image.new("RGB", (320, 240), (90, 90, 90)), "PNG"))
    with_faces, without = root / "faces", root / "plain"
    assert run(config(tiny, src, with_faces, captioner="none", detect_faces=True)).ok
    assert run(config(tiny, src, without, captioner="none")).ok
    rows = {Path(r["uri"]).name: r for r in pq.read_table(with_faces / "parts").to_pylist()}
    return src, with_faces, without, rows


def samples(folder: Path) -> dict[str, tuple[bytes, dict]]:
    """image_id -> (image bytes, row JSON) of every sample in the subset's tars."""
    members: dict[str, bytes] = {}
    for path in sorted(folder.glob("*.tar")):
        with tarfile.open(path) as tar:
            members.update({m.name: tar.extractfile(m).read() for m in tar.getmembers()})
    out = {}
    for name, data in members.items():
        key, ext = name.split(".", 1)
        if ext not in ("json", "txt", "npy"):
            out[key] = (data, json.loads(members[f"{key}.json"]))
    return out


def test_curated_webdataset_drops_location_and_serial_keeping_pixels(made, tmp_path):
    src, out, _, rows = made
    summary = curate(str(out), str(tmp_path / "sub"), fmt="webdataset")
    assert summary["with_location"] == 1 and summary["with_faces"] == 1
    got = samples(tmp_path / "sub")
    image, meta = got[rows["private.jpg"]["image_id"]]
    original = (src / "private.jpg").read_bytes()
    assert not any(p in image for p in PRIVATE_BYTES) and meta["export_metadata"] == "stripped"
    a, b = decode_image(image, 0), decode_image(original, 0)
    assert (a.width, a.height) == (b.width, b.height) == (64, 96)  # orientation kept
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
    assert Image.open(io.BytesIO(image)).getexif().get(0x0112) == 6
    image, meta = got[rows["face.png"]["image_id"]]  # no --blur-faces: the face is as read
    assert image == (src / "face.png").read_bytes()
    html = (tmp_path / "sub" / "report.html").read_text()
    assert "holding a location" in html and "showing faces" in html


def test_keep_metadata_curates_the_bytes_as_read(made, tmp_path):
    src, out, _, rows = made
    curate(str(out), str(tmp_path / "sub"), fmt="webdataset", keep_metadata=True)
    image, meta = samples(tmp_path / "sub")[rows["private.jpg"]["image_id"]]
    assert image == (src / "private.jpg").read_bytes() and meta["export_metadata"] == "kept"


def test_blur_faces_blurs_only_inside_the_runs_boxes(made, tmp_path):
    src, out, _, rows = made
    summary = curate(str(out), str(tmp_path / "sub"), fmt="webdataset", blur_faces=True)
    assert summary["blur_faces"] is True
    got = samples(tmp_path / "sub")
    face = rows["face.png"]
    assert face["faces"] == 1
    image, meta = got[face["image_id"]]
    assert meta["export_metadata"] == "blurred"
    before = np.asarray(Image.open(src / "face.png").convert("RGB")).astype(int)
    after = np.asarray(Image.open(io.BytesIO(image)).convert("RGB")).astype(int)
    mask = np.zeros(before.shape[:2], dtype=bool)
    for box in face["face_boxes"]:
        left, top, right, bottom = pixel_box(box, 320, 240)
        mask[top:bottom, left:right] = True
    assert np.array_equal(before[~mask], after[~mask])
    assert np.abs(before[mask] - after[mask]).mean() > 5
    flat, _ = got[rows["flat.png"]["image_id"]]
    assert flat == (src / "flat.png").read_bytes()


def test_blur_faces_needs_a_run_that_detected_faces(made, tmp_path):
    _, _, without, _ = made
    with pytest.raises(VlpipeError, match="--detect-faces"):
        curate(str(without), str(tmp_path / "sub"), fmt="webdataset", blur_faces=True)
    assert not (tmp_path / "sub").exists()
    summary = curate(str(without), str(tmp_path / "sub2"), fmt="webdataset")
    assert summary["with_location"] == 1 and summary["with_faces"] is None
