"""The synthetic run bench/search.py measures on (made once, kept, reused): captions from a
small vocabulary with a made-up word in exactly RARE_SHARE of the rows, a `license` column with
exact shares and a `views` column, indexed by `build_index(kind="auto")`; and what it holds by
run row, for checking every hit."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np

from bench.common import SCRATCH

ROOT = SCRATCH / "search"
PART_ROWS = 100_000
DIM = 64
SEED = 0
BIG_QUERIES = 10
RARE = "zorblax"  # a made-up word, in exactly RARE_SHARE of the captions
RARE_SHARE = 0.001
LICENSES = ("cc0", "cc-by", "cc-by-sa", "proprietary")
LICENSE_SHARES = (0.01, 0.49, 0.30, 0.20)  # exact per part
USER_COLUMNS = ("license", "views")
ADJECTIVES = ("red", "small", "old", "bright", "wooden", "busy", "quiet", "green", "large", "dark")
NOUNS = (
    "dog",
    "cat",
    "car",
    "house",
    "tree",
    "bicycle",
    "boat",
    "chair",
    "lamp",
    "child",
    "bird",
    "table",
)
VERBS = ("sitting", "standing", "parked", "lying", "running", "waiting")
PLACES = (
    "on the grass",
    "by the sea",
    "in a park",
    "on a street",
    "near a window",
    "in the snow",
    "under a bridge",
    "at night",
)
QUERY_FILE, TRUTH_FILE = "queries.npy", "truth.npz"


def dataset(n: int) -> tuple[Path, dict, float]:
    """The run of n rows, written once and kept; its index built (or found up to date)."""
    from vlpipe.index.build import build_index

    path = ROOT / f"rows-{n}"
    start = time.perf_counter()
    if not (path / ".complete").exists():
        shutil.rmtree(path, ignore_errors=True)
        write_run(path, n)
        (path / ".complete").write_text("")
        print(f"wrote {path} in {time.perf_counter() - start:.0f} s", flush=True)
    meta = build_index(str(path), kind="auto", progress=False)
    action = meta.get("last_action", {}).get("action")
    print(f"index {action}: {meta['kind']} {meta.get('factory')}", flush=True)
    return path, meta, time.perf_counter() - start


def write_run(path: Path, n: int) -> None:
    import pyarrow as pa

    from bench.synthetic import clustered_chunks, part_table, write_manifest
    from vlpipe.index.tune import make_queries
    from vlpipe.rundir import PARTS, RunDir, write_table_atomic

    run = RunDir(str(path))
    licenses, views, rare, sample = [], [], [], None
    for p, vectors in enumerate(clustered_chunks(n, DIM, SEED, chunk=PART_ROWS)):
        size, start = len(vectors), p * PART_ROWS
        rng = np.random.default_rng([SEED, p])
        codes = np.empty(size, np.uint8)
        bounds = np.round(np.cumsum((0, *LICENSE_SHARES)) * size).astype(int)
        order = rng.permutation(size)
        for code, (a, b) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
            codes[order[a:b]] = code
        tagged = np.zeros(size, bool)
        tagged[rng.permutation(size)[: round(RARE_SHARE * size)]] = True
        words = [rng.integers(0, len(w), size) for w in (ADJECTIVES, NOUNS, VERBS, PLACES)]
        captions = [
            f"a {RARE if t else ADJECTIVES[a]} {NOUNS[b]} {VERBS[c]} {PLACES[d]}"
            for t, a, b, c, d in zip(tagged, *words, strict=True)
        ]
        count = rng.integers(0, 1_000_000, size, dtype=np.int64)
        uris = [f"synthetic/{start + i:08d}.jpg" for i in range(size)]
        table = part_table(vectors, uris, captions)
        table = table.append_column("license", pa.array(np.array(LICENSES)[codes], pa.string()))
        table = table.append_column("views", pa.array(count, pa.int64()))
        write_table_atomic(run.fs, run.join(PARTS, f"part-{p:05d}.parquet"), table)
        licenses.append(codes)
        views.append(count)
        rare.append(tagged)
        if sample is None:
            sample = vectors[rng.choice(size, BIG_QUERIES, replace=False)]
    write_manifest(run, DIM, n)
    np.save(path / QUERY_FILE, make_queries(sample, seed=2024))
    np.savez(
        path / TRUTH_FILE,
        license=np.concatenate(licenses),
        views=np.concatenate(views),
        rare=np.concatenate(rare),
    )


def uri_row(uri: str) -> int:
    """The run row a synthetic uri names (synthetic/<row>.jpg)."""
    return int(uri.rsplit("/", 1)[1].split(".")[0])


class Truth:
    """What the generated data holds, by run row."""

    def __init__(self, run: Path):
        with np.load(run / TRUTH_FILE) as data:
            self.license, self.views, self.rare = data["license"], data["views"], data["rare"]
        self.rows = len(self.license)

    def count(self, license: str) -> int:
        return int((self.license == LICENSES.index(license)).sum())
