"""Run directories the tests read: written row by row as the pipeline writes them, or made by a
real pipeline run; shared by the eval, serve, dedup-report and browser tests."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pyarrow as pa
import torch
from PIL import Image

from tests.helpers.paths import EXAMPLES
from vlpipe.rundir import PARTS, SUCCESS, RunDir, write_table_atomic
from vlpipe.schema import SCHEMA_VERSION, image_id, result_schema

#: photos in make_indexed_run's run (plus one file that is not an image)
INDEXED_PHOTOS = 12
#: photos in make_dedup_run's run (plus four copies of three of them)
DEDUP_PHOTOS = 8
#: the exact copy's name in make_dedup_run holds markup: the report must escape it
EXACT = 'copy <b onload=x>exact & "q".jpg'


def write_run_dir(out: Path, embedder_name: str, embedder, rows: list[dict], float16=True) -> Path:
    """A run directory as the pipeline writes it: parts per the result schema, manifest, _SUCCESS.

    rows: dicts with uri, caption and embedding (plus optional width/height); split in 2 parts.
    """
    schema = result_schema(embedder.dim, float16=float16)
    run = RunDir(str(out))
    half = (len(rows) + 1) // 2
    for n, chunk in enumerate((rows[:half], rows[half:])):
        table = pa.Table.from_pylist(
            [
                {
                    "image_id": image_id(r["uri"]),
                    "uri": r["uri"],
                    "width": r.get("width", 64),
                    "height": r.get("height", 48),
                    "caption": r["caption"],
                    "embedding": [float(x) for x in r["embedding"]],
                    "text": None,
                    "text_score": None,
                }
                for r in chunk
            ],
            schema=schema,
        )
        write_table_atomic(run.fs, run.join(PARTS, f"part-{n:05d}.parquet"), table)
    run.write_manifest(
        {
            "vlpipe_version": "0.1.0",
            "schema_version": SCHEMA_VERSION,
            "models": {
                "captioner": {"name": "test-captions", "config": {}},
                "embedder": {
                    "name": embedder_name,
                    "config": embedder.describe(),
                    "fingerprint": embedder.fingerprint(),
                    "dim": embedder.dim,
                },
            },
            "embedding_dtype": "float16" if float16 else "float32",
            "counts": {"seen": len(rows), "written": len(rows), "failed": 0},
        }
    )
    (out / SUCCESS).write_bytes(b"")
    return out


def make_indexed_run(root: Path) -> tuple[Path, dict[str, str]]:
    """A run dir over INDEXED_PHOTOS example photos (captioned with a human caption each) plus one
    indexed file that is not an image, with a built index. Returns (run dir, name -> caption)."""
    from bench.hf_tiny import build_tiny_clip
    from vlpipe.index.build import build_index
    from vlpipe.models.registry import load_embedder

    clip = build_tiny_clip(root / "tiny-clip")
    embedder = load_embedder(str(clip), device="cpu")
    with open(EXAMPLES.parent / "captions.csv", newline="") as f:
        captions = {}
        for row in csv.DictReader(f):
            captions.setdefault(row["image"], row["caption"])
    images = root / "images"
    images.mkdir()
    names = sorted(captions)[:INDEXED_PHOTOS]
    for name in names:
        shutil.copy(EXAMPLES / name, images / name)
    (images / "notes.jpg").write_bytes(b"<html>not an image</html>")
    pixels = torch.stack(
        [embedder.preprocess(Image.open(images / n).convert("RGB")) for n in names]
    )
    vectors = list(embedder.embed_images(pixels))
    rows = [
        {"uri": str(images / n), "caption": captions[n], "embedding": v}
        for n, v in zip(names, vectors, strict=True)
    ]
    # the file that is not an image gets a vector far from every photo's: no ties
    notes = {"uri": str(images / "notes.jpg"), "caption": "a text file", "embedding": -vectors[0]}
    rows.append(notes)
    out = write_run_dir(root / "out", str(clip), embedder, rows)
    build_index(str(out), progress=False)
    return out, {n: captions[n] for n in names}


def make_dedup_run(root: Path, thumbnail_px: int = 0) -> tuple[Path, list[set[str]]]:
    """A real run over DEDUP_PHOTOS example photos plus copies of three of them (the same bytes, a
    JPEG at quality 15, a half-size PNG, a grayscale JPEG), deduplicated. Returns the run dir
    and the expected clusters as sets of file names, biggest first."""
    from vlpipe.api import run_and_index as run
    from vlpipe.dedup.run import dedup
    from vlpipe.pipeline.options import RunConfig

    images = root / "images"
    images.mkdir(parents=True)
    names = sorted(p.name for p in EXAMPLES.glob("*.jpg"))[:DEDUP_PHOTOS]
    for name in names:
        shutil.copy(EXAMPLES / name, images / name)
    a, b, c = names[:3]
    shutil.copy(images / a, images / EXACT)
    Image.open(images / a).save(images / "copy-q15.jpg", quality=15)
    big = Image.open(images / b)
    big.resize((big.width // 2, big.height // 2)).save(images / "copy-half.png")
    Image.open(images / c).convert("L").save(images / "copy-gray.jpg")
    out = root / "out"
    config = RunConfig(source=str(images), output=str(out), progress=False,
                       thumbnail_px=thumbnail_px, batch_size=16)  # fmt: skip
    assert run(config, echo=lambda _: None).ok
    dedup(str(out))
    return out, [{a, EXACT, "copy-q15.jpg"}, {b, "copy-half.png"}, {c, "copy-gray.jpg"}]
