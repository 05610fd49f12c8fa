"""Synthetic clustered embeddings and run directories, for index tests and benchmarks.

Real embeddings are clumpy: many near-duplicates in some regions, sparse elsewhere. These vectors
are a Gaussian mixture on the unit sphere with Zipf-like cluster sizes and varied spreads, so an
approximate index has real work to do (exact top-10 sets cross cluster borders).

Shared by the tests and the benchmarks, so it lives in bench/ (which imports no test module): the
tests and bench/bench_index.py (run from the repository root) import it as `bench.synthetic`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import numpy as np
import pyarrow as pa

from vlpipe.rundir import PARTS, RunDir, write_table_atomic
from vlpipe.schema import SCHEMA_VERSION, image_id, result_schema

SYNTHETIC_EMBEDDER = {"name": "synthetic", "config": {"kind": "synthetic"}}


def clustered_chunks(
    n: int, dim: int, seed: int = 0, chunk: int = 100_000, n_clusters: int | None = None
) -> Iterator[np.ndarray]:
    """n unit vectors in chunks (float32), the same ones for the same arguments."""
    rng = np.random.default_rng(seed)
    n_clusters = n_clusters or max(8, min(4000, n // 250))
    centers = rng.standard_normal((n_clusters, dim)).astype(np.float32) / np.sqrt(dim)
    spread = rng.uniform(0.5, 1.2, n_clusters).astype(np.float32)
    weights = 1.0 / (np.arange(n_clusters) + 10.0)
    weights /= weights.sum()
    for start in range(0, n, chunk):
        size = min(chunk, n - start)
        label = rng.choice(n_clusters, size, p=weights)
        noise = rng.standard_normal((size, dim)).astype(np.float32) / np.sqrt(dim)
        x = centers[label] + spread[label, None] * noise
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        yield x


def clustered_vectors(n: int, dim: int, seed: int = 0, **kw) -> np.ndarray:
    return np.concatenate(list(clustered_chunks(n, dim, seed, **kw)))


def write_part(
    run: RunDir,
    name: str,
    vectors: np.ndarray,
    uris: list[str],
    captions: list[str] | None = None,
    thumbnails: list[bytes | None] | None = None,
) -> str:
    """One part of result rows (float16 embeddings) with the given vectors and uris."""
    path = run.join(PARTS, name)
    write_table_atomic(run.fs, path, part_table(vectors, uris, captions, thumbnails))
    return path


def part_table(
    vectors: np.ndarray,
    uris: list[str],
    captions: list[str] | None = None,
    thumbnails: list[bytes | None] | None = None,
) -> pa.Table:
    """Result rows as a part holds them; with `thumbnails`, the stored-thumbnail column of a
    `--save-thumbnails` run too. Columns of the result schema not given here are null, so the
    helper follows the schema as it grows."""
    dim = vectors.shape[1]
    flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float16).reshape(-1))
    n = len(uris)
    columns = {
        "image_id": pa.array([image_id(u) for u in uris], pa.string()),
        "uri": pa.array(uris, pa.string()),
        "width": pa.array(np.full(n, 640, np.int32)),
        "height": pa.array(np.full(n, 480, np.int32)),
        "caption": pa.array(
            captions if captions is not None else [f"image {u}" for u in uris], pa.string()
        ),
        "embedding": pa.FixedSizeListArray.from_arrays(flat, dim),
    }
    if thumbnails is not None:
        columns["thumbnail"] = pa.array(thumbnails, pa.binary())
    schema = result_schema(dim, thumbnails=thumbnails is not None)
    return pa.table([columns.get(f.name, pa.nulls(n, f.type)) for f in schema], schema=schema)


def write_manifest(run: RunDir, dim: int, count: int, embedder: dict | None = None) -> None:
    """A manifest as the pipeline writes it, naming `embedder` (name, config, fingerprint)."""
    embedder = dict(embedder or SYNTHETIC_EMBEDDER)
    embedder.setdefault("fingerprint", _fingerprint(embedder))
    embedder["dim"] = dim
    run.write_manifest(
        {
            "vlpipe_version": "0.1.0",
            "schema_version": SCHEMA_VERSION,
            "models": {"captioner": {"name": "synthetic", "config": {}}, "embedder": embedder},
            "embedding_dtype": "float16",
            "counts": {"seen": count, "written": count, "failed": 0},
            "options": {},
        }
    )


def write_synthetic_run(
    out: str,
    n: int,
    dim: int,
    part_rows: int = 50_000,
    seed: int = 0,
    embedder: dict | None = None,
    first_part: int = 0,
) -> RunDir:
    """A run directory of n synthetic clustered vectors in parts of `part_rows` rows."""
    run = RunDir(out)
    chunks = clustered_chunks(n, dim, seed, chunk=part_rows)
    for i, vectors in enumerate(chunks):
        start = i * part_rows
        uris = [f"synthetic/{seed}/{start + j:08d}.jpg" for j in range(len(vectors))]
        write_part(run, f"part-{first_part + i:05d}.parquet", vectors, uris)
    write_manifest(run, dim, n, embedder)
    return run


def _fingerprint(embedder: dict) -> str:
    import json

    blob = json.dumps(embedder.get("config", {}), sort_keys=True)
    return hashlib.sha1(f"{embedder['name']}:{blob}".encode()).hexdigest()[:16]
