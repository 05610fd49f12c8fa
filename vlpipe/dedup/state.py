"""What an incremental dedup keeps in OUT/dedup/state/: the parts it has seen (in row order),
its settings, its FAISS indexes and the pairs found so far, so a rerun that added parts queries
only the new rows (against all of them) and adds the pairs they make."""

from __future__ import annotations

import json
import posixpath
import tempfile
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from vlpipe.dedup.graph import Edges
from vlpipe.rundir import DEDUP, RunDir, write_atomic, write_table_atomic

STATE = "state"
STATE_VERSION = 1


@dataclass
class State:
    settings: dict  # method, thresholds, embedder fingerprint: another value means a full run
    parts: list[list]  # [name, rows] in row order
    trained_rows: dict  # rows each IVF index was trained for (a 4x growth retrains)
    edges: Edges
    nearest: np.ndarray  # (n,) per space: nearest row, -1 when none
    nearest_sim: np.ndarray


def state_path(run: RunDir, name: str = "") -> str:
    return run.join(DEDUP, STATE, name) if name else run.join(DEDUP, STATE)


def load(run: RunDir) -> State | None:
    """The saved state, or None when there is none (or it is not one this vlpipe can use)."""
    fs = run.fs
    try:
        meta = json.loads(fs.cat_file(state_path(run, "state.json")))
        if meta.get("version") != STATE_VERSION:
            return None
        edges = pq.read_table(fs.open(state_path(run, "edges.parquet"), "rb"))
        near = pq.read_table(fs.open(state_path(run, "nearest.parquet"), "rb"))
    except (FileNotFoundError, ValueError, OSError, pa.ArrowInvalid):
        return None
    return State(
        settings=meta["settings"],
        parts=meta["parts"],
        trained_rows=meta["trained_rows"],
        edges=Edges(*(edges.column(c).to_numpy() for c in ("a", "b", "sim", "how"))),
        nearest=near.column("nearest").to_numpy(),
        nearest_sim=near.column("similarity").to_numpy(),
    )


def save(run: RunDir, state: State, indexes: dict) -> None:
    """Indexes and tables first, state.json last: a state.json always names complete files."""
    for name, space in indexes.items():
        write_atomic(run.fs, state_path(run, f"{name}.faiss"), _index_bytes(space))
    e = state.edges
    edges = pa.table({"a": e.a, "b": e.b, "sim": e.sim, "how": e.how})
    write_table_atomic(run.fs, state_path(run, "edges.parquet"), edges)
    near = pa.table({"nearest": state.nearest, "similarity": state.nearest_sim})
    write_table_atomic(run.fs, state_path(run, "nearest.parquet"), near)
    meta = {
        "version": STATE_VERSION,
        "settings": state.settings,
        "parts": state.parts,
        "trained_rows": state.trained_rows,
        "indexes": sorted(indexes),
    }
    write_atomic(run.fs, state_path(run, "state.json"), json.dumps(meta, indent=1).encode())


def load_index(run: RunDir, name: str):
    """A saved FAISS index (vector or binary), or None."""
    import faiss

    path = state_path(run, f"{name}.faiss")
    if not run.fs.exists(path):
        return None
    with tempfile.TemporaryDirectory() as tmp:
        local = posixpath.join(tmp, "index")
        run.fs.get(path, local)
        reader = faiss.read_index_binary if name == "hashes" else faiss.read_index
        return reader(local)


def _index_bytes(space) -> bytes:
    import faiss

    writer = faiss.write_index_binary if space.binary else faiss.write_index
    with tempfile.TemporaryDirectory() as tmp:
        local = posixpath.join(tmp, "index")
        writer(space.index, local)
        with open(local, "rb") as f:
            return f.read()
