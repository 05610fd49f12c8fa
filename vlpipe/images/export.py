"""The bytes an output publishes for an image: metadata stripped, faces blurred, or as read.

Why one function: every output that copies image bytes (WebDataset shards from `vlpipe run`,
`vlpipe curate` exports, any later format) must apply the same privacy policy, so the writers
call this and none decides on its own. Stripping is lossless (vlpipe.images.strip); only an
image with faces to blur, or a container that cannot be stripped losslessly, is re-encoded.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image, ImageOps

from vlpipe.images.blur import Box, blur_boxes
from vlpipe.images.strip import StripError, strip_metadata

#: what happened to the bytes, recorded per sample (the `.json` of a WebDataset sample)
KEPT, STRIPPED, UNCHANGED, REENCODED, BLURRED = (
    "kept",
    "stripped",
    "unchanged",
    "reencoded",
    "blurred",
)


@dataclass(frozen=True)
class ExportPolicy:
    """`keep_metadata`: publish the bytes exactly as read (`--keep-metadata`); `blur_faces`:
    blur the row's face boxes (`--blur-faces`), which re-encodes those images."""

    keep_metadata: bool = False
    blur_faces: bool = False


@dataclass(frozen=True)
class Exported:
    data: bytes
    format: str  # Pillow's name of the exported bytes' format
    metadata: str  # kept | stripped | unchanged | reencoded | blurred
    sha256: str  # of the exported bytes (the row's sha256 is of the bytes read)


def export_image(
    data: bytes, fmt: str, policy: ExportPolicy, boxes: Sequence[Box] | None = None
) -> Exported:
    """The bytes to publish for one image under `policy`; `boxes` are the row's face boxes."""
    if policy.blur_faces and boxes:
        return _done(*reencode(data, fmt, boxes), BLURRED)
    if policy.keep_metadata:
        return _done(data, fmt, KEPT)
    try:
        stripped = strip_metadata(data, fmt)
    except StripError:
        return _done(*reencode(data, fmt), REENCODED)
    return _done(stripped, fmt, UNCHANGED if stripped is data else STRIPPED)


def exported(row: dict, data: bytes | None, policy: ExportPolicy) -> tuple[dict, bytes | None]:
    """(row, bytes) as an output that copies image bytes gets them: the bytes under `policy`
    (the row's face boxes blurred when it says so), the row with what was done (`export_format`,
    `export_metadata`, `export_sha256`). Every format is fed through this, so none can skip it;
    no bytes (a format that wants none) pass as they are."""
    if data is None:
        return row, None
    out = export_image(bytes(data), str(row.get("format") or ""), policy, row.get("face_boxes"))
    return {**row, **export_columns(out)}, out.data


def export_columns(out: Exported) -> dict:
    return {"export_format": out.format, "export_metadata": out.metadata,
            "export_sha256": out.sha256}  # fmt: skip


def reencode(data: bytes, fmt: str, boxes: Sequence[Box] = ()) -> tuple[bytes, str]:
    """The image upright (EXIF orientation applied), boxes blurred, saved without metadata:
    a JPEG stays a JPEG with its own quantisation tables and subsampling (so pixels outside the
    boxes barely move), anything else becomes a lossless PNG (pixels outside are identical)."""
    src = Image.open(io.BytesIO(data))
    is_jpeg = src.format in ("JPEG", "MPO")
    options = {"icc_profile": src.info["icc_profile"]} if src.info.get("icc_profile") else {}
    if is_jpeg:
        options.update(qtables=src.quantization, subsampling=_subsampling(src))
    image = ImageOps.exif_transpose(src)
    if image.mode not in ("RGB", "RGBA", "L", "LA"):
        image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
    image = blur_boxes(image, boxes)
    buf = io.BytesIO()
    if is_jpeg and image.mode in ("RGB", "L"):
        image.save(buf, "JPEG", **options)
        return buf.getvalue(), "JPEG"
    image.save(
        buf, "PNG", **({"icc_profile": options["icc_profile"]} if "icc_profile" in options else {})
    )
    return buf.getvalue(), "PNG"


def _subsampling(src: Image.Image) -> int:
    from PIL.JpegImagePlugin import get_sampling

    value = get_sampling(src)
    return value if value in (0, 1, 2) else 2


def _done(data: bytes, fmt: str, how: str) -> Exported:
    return Exported(data, fmt, how, hashlib.sha256(data).hexdigest())


__all__ = ["ExportPolicy", "Exported", "export_columns", "export_image", "exported", "reencode"]
