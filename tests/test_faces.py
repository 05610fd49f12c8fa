"""Face detection (vlpipe.models.faces, MTCNN with facenet-pytorch's weights) on a real face
pasted at a known place, flat images without faces, and face blurring that leaves every pixel
outside the boxes alone (vlpipe.images.blur, vlpipe.images.export)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from tests.helpers.photos import encode, pasted_face, picture
from vlpipe.images.blur import blur_boxes, pixel_box
from vlpipe.images.export import ExportPolicy, export_image
from vlpipe.models.faces import FaceDetector


@pytest.fixture(scope="module")
def detector() -> FaceDetector:
    return FaceDetector()


def centre_inside(box, region) -> bool:
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    return region[0] <= cx <= region[2] and region[1] <= cy <= region[3]


@pytest.mark.parametrize(
    "canvas, at, size",
    [
        ((320, 240), (200, 100), (80, 90)),
        ((240, 240), (20, 30), (50, 56)),
        ((400, 300), (150, 60), (160, 180)),
    ],
)
def test_a_pasted_face_is_found_where_it_was_pasted(detector, canvas, at, size):
    image, region = pasted_face(canvas, at, size)
    boxes = detector.detect(image)
    assert len(boxes) == 1
    assert centre_inside(boxes[0], region)
    assert all(0.0 <= v <= 1.0 for v in boxes[0])


def test_two_faces_are_two_boxes(detector):
    image, left = pasted_face((400, 200), (40, 50), (80, 90))
    right_image, right = pasted_face((400, 200), (260, 60), (80, 90))
    image.paste(right_image.crop((200, 0, 400, 200)), (200, 0))
    boxes = detector.detect(image)
    assert len(boxes) == 2
    assert sorted(centre_inside(b, left) for b in boxes) == [False, True]
    assert sorted(centre_inside(b, right) for b in boxes) == [False, True]


@pytest.mark.parametrize(
    "image",
    [
        Image.new("RGB", (320, 240), (120, 130, 140)),
        Image.new("RGB", (240, 320), (255, 255, 255)),
        Image.new("RGB", (64, 64), (0, 0, 0)),
        Image.fromarray(np.tile(np.arange(256, dtype=np.uint8), (200, 1))).convert("RGB"),
        picture((300, 200)),
        Image.new("RGB", (8, 8), (10, 10, 10)),  # smaller than the detector's window
    ],
)
def test_no_faces_on_flat_images(detector, image):
    assert detector.detect(image) == []


def test_blur_changes_only_the_inside_of_the_boxes(detector):
    image, _ = pasted_face()
    boxes = detector.detect(image)
    blurred = blur_boxes(image, boxes)
    inside = inside_mask(image.size, boxes)
    before, after = np.asarray(image), np.asarray(blurred)
    assert np.array_equal(before[~inside], after[~inside])
    assert np.abs(before[inside].astype(int) - after[inside]).mean() > 5
    assert np.array_equal(np.asarray(image), before)  # the input is not modified


def inside_mask(size, boxes) -> np.ndarray:
    mask = np.zeros((size[1], size[0]), dtype=bool)
    for box in boxes:
        left, top, right, bottom = pixel_box(box, *size)
        mask[top:bottom, left:right] = True
    return mask


def test_blurred_png_export_differs_from_the_original_only_inside_the_boxes(detector):
    image, _ = pasted_face()
    data = encode(image, "PNG")
    boxes = detector.detect(image)
    out = export_image(data, "PNG", ExportPolicy(blur_faces=True), boxes)
    assert out.metadata == "blurred" and out.format == "PNG"
    before = np.asarray(image)
    after = np.asarray(Image.open(io.BytesIO(out.data)).convert("RGB"))
    inside = inside_mask(image.size, boxes)
    assert np.array_equal(before[~inside], after[~inside])
    assert np.abs(before[inside].astype(int) - after[inside]).mean() > 5
    # faces found again on the blurred export: none
    assert detector.detect(Image.open(io.BytesIO(out.data)).convert("RGB")) == []


def test_blurred_jpeg_export_keeps_its_tables_and_barely_moves_outside_pixels(detector):
    image, _ = pasted_face((320, 240), (200, 96), (80, 96))
    data = encode(image, "JPEG", quality=90)
    boxes = detector.detect(image)
    out = export_image(data, "JPEG", ExportPolicy(blur_faces=True), boxes)
    assert out.format == "JPEG"
    decoded = np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(int)
    after = np.asarray(Image.open(io.BytesIO(out.data)).convert("RGB")).astype(int)
    # JPEG works on 8x8 blocks (16x16 with chroma subsampling): outside the boxes grown to
    # whole blocks, re-encoding with the same tables changes pixels by rounding only
    grown = [(b[0] - 16 / 320, b[1] - 16 / 240, b[2] + 16 / 320, b[3] + 16 / 240) for b in boxes]
    outside = ~inside_mask(image.size, grown)
    assert np.abs(decoded[outside] - after[outside]).mean() < 1.0
    inside = inside_mask(image.size, boxes)
    assert np.abs(decoded[inside] - after[inside]).mean() > 5


def test_without_boxes_nothing_is_reencoded():
    data = encode(picture(), "JPEG")
    out = export_image(data, "JPEG", ExportPolicy(blur_faces=True), [])
    assert out.data is data and out.metadata == "unchanged"
