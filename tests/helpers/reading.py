"""Small input files and listings for the reading tests (test_reading, test_reading_tars)."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image

from vlpipe.reading.plan import plan
from vlpipe.reading.specs import KIND_PAGE


def png(seed: int = 0, size=(8, 6)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (seed * 40 % 256, 100, 30)).save(buf, "PNG")
    return buf.getvalue()


def write(path: Path, data: bytes = b"") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data or png())
    return path


def page_uris(source, target: int = 16) -> list[str]:
    specs = list(plan(str(source), target))
    assert {s.kind for s in specs} == {KIND_PAGE}
    return [u for s in specs for u in s.uris]
