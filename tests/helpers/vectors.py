"""Reading a run's stored vectors back, for the index tests; comparing two sets of vectors."""

from __future__ import annotations

import numpy as np

from vlpipe.rundir import RunDir


def stored_vectors(run_dir) -> tuple[np.ndarray, list[str]]:
    """All vectors of a run as the index sees them (fp16 from Parquet, re-normalised), with ids."""
    run = RunDir(str(run_dir))
    vecs, ids = [], []
    for batch in run.iter_batches(["image_id", "embedding"]):
        col = batch.column("embedding")
        vecs.append(col.values.to_numpy(zero_copy_only=False).reshape(-1, col.type.list_size))
        ids += batch.column("image_id").to_pylist()
    x = np.concatenate(vecs).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True), ids


def row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The cosine between each row of `a` and the same row of `b` (a precision's or a backend's
    embeddings against the reference's)."""
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
