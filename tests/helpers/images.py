"""Builders shared by the pipeline tests: a mixed corpus of real image files and tiny models."""

from __future__ import annotations

import io
import random
from pathlib import Path

from PIL import Image

FORMATS = [("jpg", "JPEG"), ("png", "PNG"), ("webp", "WEBP"), ("gif", "GIF"), ("bmp", "BMP")]
BROKEN = {
    "broken/truncated.jpg": "decode",
    "broken/empty.jpg": "decode",
    "broken/notes.jpg": "decode",
}


def image_bytes(size: tuple[int, int], fmt: str, seed: int) -> bytes:
    rng = random.Random(seed)
    img = Image.new("RGB", size, tuple(rng.randrange(256) for _ in range(3)))
    for _ in range(6):  # a few shapes, so captions and embeddings differ between images
        x0, y0 = rng.randrange(size[0]), rng.randrange(size[1])
        box = (x0, y0, min(size[0], x0 + rng.randrange(4, 80)), min(size[1], y0 + 30))
        img.paste(tuple(rng.randrange(256) for _ in range(3)), box)
    buf = io.BytesIO()
    img.convert("P" if fmt == "GIF" else "RGB").save(buf, fmt)
    return buf.getvalue()


def make_corpus(root: Path, n_good: int = 45) -> dict[str, int]:
    """n_good valid images of mixed formats and sizes (in nested folders) plus 3 broken files."""
    rng = random.Random(0)
    for i in range(n_good):
        ext, fmt = FORMATS[i % len(FORMATS)]
        size = (rng.randrange(24, 320), rng.randrange(24, 320))
        path = root / f"sub{i % 3}" / f"img{i:03d}.{ext}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(image_bytes(size, fmt, i))
    (root / "broken").mkdir(parents=True, exist_ok=True)
    good_jpeg = image_bytes((200, 150), "JPEG", 99)
    (root / "broken/truncated.jpg").write_bytes(good_jpeg[: len(good_jpeg) // 2])
    (root / "broken/empty.jpg").write_bytes(b"")
    (root / "broken/notes.jpg").write_bytes(b"<html><body>not an image</body></html>")
    return {"good": n_good, "broken": len(BROKEN)}
