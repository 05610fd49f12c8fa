"""The output contract: Parquet schemas of result and failure rows, and the stable image id."""

from __future__ import annotations

import hashlib

import pyarrow as pa

SCHEMA_VERSION = 1

# Failure stages, in the order an image meets them.
STAGE_READ = "read"
STAGE_DECODE = "decode"
STAGE_MODEL = "model"
STAGE_INPUT = "input"


def image_id(uri: str) -> str:
    """Stable id of an input: the same uri always maps to the same id, on every machine."""
    return hashlib.sha1(uri.encode("utf-8")).hexdigest()[:20]


def result_schema(dim: int, float16: bool = True) -> pa.Schema:
    """One row per processed image; the embedding is a fixed-size list so readers get a matrix."""
    value = pa.float16() if float16 else pa.float32()
    return pa.schema(
        [
            ("image_id", pa.string()),
            ("uri", pa.string()),
            ("width", pa.int32()),
            ("height", pa.int32()),
            ("caption", pa.string()),
            ("embedding", pa.list_(value, dim)),
            ("text", pa.string()),
            ("text_score", pa.float32()),
        ]
    )


FAILED_SCHEMA = pa.schema(
    [
        ("image_id", pa.string()),
        ("uri", pa.string()),
        ("stage", pa.string()),
        ("reason", pa.string()),
        ("error", pa.string()),
    ]
)
