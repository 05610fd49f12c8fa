"""The tests' one run-directory factory: `make_run` writes a run directory as the pipeline does
(parts per the result schema, manifest, optionally _SUCCESS, an index, a dedup), from given or
synthetic vectors; `write_part` and `write_manifest` are its two steps, for tests that grow a run
part by part. Also two ready runs over the example photos: `make_indexed_run` (fabricated, with
a tiny CLIP's real vectors) and `make_dedup_run` (made by a real pipeline run)."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from PIL import Image

from bench.synthetic import clustered_chunks
from tests.helpers.paths import EXAMPLES
from vlpipe.rundir import PARTS, SUCCESS, RunDir, write_table_atomic
from vlpipe.schema import SCHEMA_VERSION, image_id, result_schema

#: photos in make_indexed_run's run (plus one file that is not an image)
INDEXED_PHOTOS = 12
#: photos in make_dedup_run's run (plus four copies of three of them)
DEDUP_PHOTOS = 8
#: the exact copy's name in make_dedup_run holds markup: the report must escape it
EXACT = 'copy <b onload=x>exact & "q".jpg'
#: the manifest's embedder where a test names none
SYNTHETIC_EMBEDDER = {"name": "synthetic", "config": {"kind": "synthetic"}}
#: `embedder=NO_EMBEDDER`: a captions-only run, as `--embedder none` writes it
NO_EMBEDDER = "none"


def make_run(
    out: str | Path,
    vectors: np.ndarray | int,
    *,
    dim: int = 16,
    seed: int = 0,
    part_rows: int | None = None,
    first_part: int = 0,
    uris: list[str] | None = None,
    captions: list[str | None] | None = None,
    columns: dict[str, list | pa.Array] | None = None,
    thumbnails: list[bytes | None] | None = None,
    embedder: dict | str | None = None,
    dtype: str | None = "float16",
    success: bool = False,
    index: bool = False,
    dedup: bool = False,
) -> RunDir:
    """A run directory at `out` (a path or fsspec URL) of one row per vector.

    vectors: the rows' embeddings, or a count of synthetic clustered unit vectors of `dim`
    dimensions (the same ones for the same seed and part_rows; uris synthetic/SEED/NNNNNNNN.jpg).
    part_rows: rows per part (default: one part), numbered from `first_part`.
    uris, captions, thumbnails, columns: the rows' values (see part_table).
    embedder: the manifest's record ({"name", "config"[, "fingerprint"]}, see embedder_record),
    or NO_EMBEDDER for a captions-only run; default a synthetic one.
    dtype: "float16" (what the pipeline stores), "float32", or None for no embeddings.
    success: write _SUCCESS; index: build the index; dedup: run `vlpipe dedup` on it.
    """
    if isinstance(vectors, int):
        chunks = clustered_chunks(vectors, dim, seed, chunk=part_rows or 50_000)
        vectors = np.concatenate(list(chunks)) if vectors else np.zeros((0, dim), np.float32)
        uris = uris or [f"synthetic/{seed}/{i:08d}.jpg" for i in range(len(vectors))]
    n, dim = vectors.shape
    if uris is None:
        raise ValueError("make_run: give the rows' uris with their vectors")
    run = RunDir(str(out))
    step = part_rows or max(n, 1)
    for p, start in enumerate(range(0, n, step)):
        rows = slice(start, start + step)
        write_part(
            run,
            f"part-{first_part + p:05d}.parquet",
            vectors[rows],
            uris[rows],
            captions=captions[rows] if captions is not None else None,
            thumbnails=thumbnails[rows] if thumbnails is not None else None,
            columns={k: v[rows] for k, v in (columns or {}).items()},
            dtype=dtype,
        )
    write_manifest(run, dim, n, embedder, dtype)
    if success:
        run.fs.pipe_file(run.join(SUCCESS), b"")
    if index:
        from vlpipe.index.build import build_index

        build_index(run.path, progress=False)
    if dedup:
        from vlpipe.dedup.run import dedup as run_dedup

        run_dedup(run.path)
    return run


def write_part(
    run: RunDir,
    name: str,
    vectors: np.ndarray,
    uris: list[str],
    captions: list[str | None] | None = None,
    thumbnails: list[bytes | None] | None = None,
    columns: dict[str, list | pa.Array] | None = None,
    dtype: str | None = "float16",
    row_group_size: int | None = None,
) -> str:
    """One part of result rows in `run` (see part_table); returns its path."""
    path = run.join(PARTS, name)
    table = part_table(vectors, uris, captions, thumbnails, columns, dtype)
    if row_group_size:  # several row groups: readers find rows through the footer
        import pyarrow.parquet as pq

        run.fs.makedirs(run.join(PARTS), exist_ok=True)
        with run.fs.open(path, "wb") as f:
            pq.write_table(table, f, row_group_size=row_group_size)
    else:
        write_table_atomic(run.fs, path, table)
    return path


def part_table(
    vectors: np.ndarray,
    uris: list[str],
    captions: list[str | None] | None = None,
    thumbnails: list[bytes | None] | None = None,
    columns: dict[str, list | pa.Array] | None = None,
    dtype: str | None = "float16",
) -> pa.Table:
    """Result rows as a part holds them, 640x480 images captioned "image URI" unless `captions`;
    with `thumbnails`, the stored-thumbnail column of a `--save-thumbnails` run. `columns`
    replaces result columns (cast to the schema's type) or adds user columns after them (a
    pa.Array keeps its type). Result columns not given are null, so the factory follows the
    schema as it grows."""
    n, dim = len(uris), vectors.shape[1]
    schema = result_schema(
        dim,
        float16=dtype == "float16",
        embeddings=dtype is not None,
        thumbnails=thumbnails is not None,
    )
    given = {
        "image_id": [image_id(u) for u in uris],
        "uri": uris,
        "width": [640] * n,
        "height": [480] * n,
        "caption": captions if captions is not None else [f"image {u}" for u in uris],
        "thumbnail": thumbnails,
    }
    if dtype is not None:
        flat = pa.array(np.ascontiguousarray(vectors, dtype=dtype).reshape(-1))
        given["embedding"] = pa.FixedSizeListArray.from_arrays(flat, dim)
    given |= columns or {}
    arrays = [_array(given.get(f.name), f.type, n) for f in schema]
    table = pa.table(arrays, schema=schema)
    for name, values in (columns or {}).items():
        if name not in schema.names:
            added = values if isinstance(values, pa.Array) else pa.array(values)
            table = table.append_column(pa.field(name, added.type), added)
    return table


def _array(values, kind: pa.DataType, n: int) -> pa.Array:
    if values is None:
        return pa.nulls(n, kind)
    if isinstance(values, pa.Array | pa.ChunkedArray):
        return values.cast(kind)
    return pa.array(values, kind)


def write_manifest(
    run: RunDir,
    dim: int,
    count: int,
    embedder: dict | str | None = None,
    dtype: str | None = "float16",
) -> None:
    """A manifest as the pipeline writes it, naming `embedder` (see make_run)."""
    manifest = {
        "vlpipe_version": "0.1.0",
        "schema_version": SCHEMA_VERSION,
        "models": {"captioner": {"name": "synthetic", "config": {}}},
        "embedding_dtype": dtype or "float16",
        "counts": {"seen": count, "written": count, "failed": 0},
        "options": {},
    }
    if embedder == NO_EMBEDDER:
        manifest["models"]["embedder"] = {"name": "none", "config": {}}
        manifest["mode"] = {"captions": True, "embeddings": False}
    else:
        record = dict(embedder or SYNTHETIC_EMBEDDER)
        record.setdefault("fingerprint", _fingerprint(record))
        manifest["models"]["embedder"] = {**record, "dim": dim}
    run.write_manifest(manifest)


def embedder_record(name: str, embedder) -> dict:
    """The manifest's record of a loaded embedder, as the pipeline writes it."""
    return {"name": name, "config": embedder.describe(), "fingerprint": embedder.fingerprint()}


def _fingerprint(record: dict) -> str:
    blob = json.dumps(record.get("config", {}), sort_keys=True)
    return hashlib.sha1(f"{record['name']}:{blob}".encode()).hexdigest()[:16]


def make_indexed_run(root: Path) -> tuple[Path, dict[str, str]]:
    """A run dir over INDEXED_PHOTOS example photos (captioned with a human caption each) plus one
    indexed file that is not an image, with a built index. Returns (run dir, name -> caption)."""
    from bench.hf_tiny import build_tiny_clip
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
    vectors = embedder.embed_images(pixels)
    # the file that is not an image gets a vector far from every photo's: no ties
    out = root / "out"
    make_run(
        out,
        np.concatenate([vectors, -vectors[:1]]),
        uris=[str(images / n) for n in names] + [str(images / "notes.jpg")],
        captions=[captions[n] for n in names] + ["a text file"],
        columns={"width": [64] * (len(names) + 1), "height": [48] * (len(names) + 1)},
        part_rows=(len(names) + 2) // 2,
        embedder=embedder_record(str(clip), embedder),
        success=True,
        index=True,
    )
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
