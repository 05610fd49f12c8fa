"""The output contract: Parquet schemas of result and failure rows, and the stable image id."""

from __future__ import annotations

import hashlib

import pyarrow as pa

__all__ = [
    "FACE_FIELDS",
    "FAILED_SCHEMA",
    "PHOTO_FIELDS",
    "RESERVED_COLUMNS",
    "SCHEMA_VERSION",
    "STAGE_DECODE",
    "STAGE_FILTER",
    "STAGE_INFER",
    "STAGE_INPUT",
    "STAGE_READ",
    "image_id",
    "result_schema",
]

SCHEMA_VERSION = 3  # 2: orig_width, orig_height, bytes, format, phash, sha256, user columns
# 3: quality signals (vlpipe.images.quality), --score columns; phash of the border-trimmed image
# 3: exif_gps, camera, taken_at; faces, face_boxes with --detect-faces

# Failure stages, in the order an image meets them.
STAGE_READ = "read"
STAGE_FILTER = "filter"  # skipped on purpose (--min-size, --max-aspect, --max-pixels)
STAGE_DECODE = "decode"
STAGE_INFER = "infer"  # the model raised on this image alone (batches are halved first)
STAGE_INPUT = "input"


def image_id(uri: str) -> str:
    """Stable id of an input: the same uri always maps to the same id, on every machine."""
    return hashlib.sha1(uri.encode("utf-8")).hexdigest()[:20]


#: what the file's metadata says (vlpipe.images.metadata): null where its EXIF is malformed
PHOTO_FIELDS = [
    ("exif_gps", pa.bool_()),  # the file holds a location (EXIF GPS or XMP GPS tags)
    ("camera", pa.string()),  # EXIF make and model
    ("taken_at", pa.timestamp("s")),  # EXIF DateTimeOriginal, the camera's local time
]
#: --detect-faces (vlpipe.models.faces): boxes are [x0, y0, x1, y1] in 0..1 of the image as
#: displayed (after EXIF orientation), most confident first
FACE_FIELDS = [
    ("faces", pa.int32()),
    ("face_boxes", pa.list_(pa.list_(pa.float32(), 4))),
]


def result_schema(
    dim: int,
    float16: bool = True,
    embeddings: bool = True,
    thumbnails: bool = False,
    extra: list[pa.Field] | tuple = (),
    faces: bool = False,
) -> pa.Schema:
    """One row per processed image; the embedding is a fixed-size list so readers get a matrix
    (all null, of type null, in a captions-only run); the quality signals (ranges in
    vlpipe.images.quality) follow the hashes; `faces` adds the face columns (--detect-faces); the
    user's own columns, then the models' extra columns (--ask, --score) come last."""
    value = pa.float16() if float16 else pa.float32()
    fields = [
        ("image_id", pa.string()),
        ("uri", pa.string()),
        ("width", pa.int32()),  # as displayed: after EXIF orientation
        ("height", pa.int32()),
        ("orig_width", pa.int32()),  # as stored in the file, before EXIF orientation
        ("orig_height", pa.int32()),
        ("bytes", pa.int64()),  # size of the source file as read
        ("format", pa.string()),  # JPEG, PNG, WEBP, GIF, BMP, TIFF, ...
        ("phash", pa.uint64()),  # 64-bit DCT perceptual hash of the decoded image
        ("sha256", pa.string()),  # of the bytes read (not of bytes an output exported)
        ("sharpness", pa.float32()),  # variance of the Laplacian, 0 upward; higher is sharper
        ("brightness", pa.float32()),  # mean luma, 0-1
        ("contrast", pa.float32()),  # std of luma, 0-0.5
        ("colorfulness", pa.float32()),  # Hasler-Suesstrunk on 0-1 channels, 0 to about 1.8
        ("entropy", pa.float32()),  # of the luma histogram, 0-8 bits
        ("grayscale", pa.bool_()),
        ("border", pa.float32()),  # share of the frame that is a uniform border, 0-1
        ("caption", pa.string()),
        ("embedding", pa.list_(value, dim) if embeddings else pa.null()),
        ("text", pa.string()),
        ("text_score", pa.float32()),
    ]
    fields += PHOTO_FIELDS
    if faces:
        fields += FACE_FIELDS
    if thumbnails:
        fields.append(("thumbnail", pa.binary()))
    return pa.schema([pa.field(n, t) for n, t in fields] + list(extra))


#: column names of vlpipe's own; a user column of the same name is refused
RESERVED_COLUMNS = frozenset(result_schema(1, thumbnails=True, faces=True).names)


FAILED_SCHEMA = pa.schema(
    [
        ("image_id", pa.string()),
        ("uri", pa.string()),
        ("stage", pa.string()),
        ("reason", pa.string()),
        ("error", pa.string()),
    ]
)
