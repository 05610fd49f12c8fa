"""Near-duplicates at scale: `vlpipe dedup` over 1M and 10M synthetic rows with planted copies,
against exact brute-force k-NN in the same run.

Data (made once, kept under bench/results/tmp/dedup_scale/): vlpipe-mini-sized (256-d) clumpy
vectors (bench.synthetic's Gaussian mixture) in parts of 100k rows, each row with a random
phash and sha256; 1% of rows are originals that get 1-3 planted copies in the *next* part (so
pairs cross parts): the vector plus noise (cosine 0.89-0.995: down to the threshold), the
phash with 0-6 bits flipped, and one copy in ten byte-identical (same vector, phash and
sha256). `truth.npz` holds the planted pairs as run rows.

Measured: `vlpipe dedup` (defaults: embedding + phash + sha256) in a child process, wall time
and peak RSS; beside it, in the same run on the same rows, `vlpipe dedup` with the settings it
shipped with before the curation issue (cosine 0.88, 10 bits: OLD_SETTINGS), whose time the
defaults must stay within 1.25x of; recall of planted pairs (both rows in one cluster).
Baseline: exact k-NN (FAISS flat inner product, k=17, the rows' own float32 vectors) over a
sample of query rows (every planted row and as many random ones), timed and scaled to all
rows, and its recall of the planted pairs of the sampled rows (the pair's cosine is above the
threshold and it is in the top 17). Goals at 1M: under 10 minutes, peak RSS under 2x the raw
float32 vectors, planted-pair recall at least 0.98 of brute force's. At 10M: the same run,
streamed from the parts.

    python -m bench.dedup_scale [--rows 1000000 10000000]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from bench.common import SCRATCH, Figure, Report, run_child

NAME = "dedup_scale"
ROOT = SCRATCH / NAME
DIM = 256
PART_ROWS = 100_000
PLANT_SHARE = 0.01
SEED = 7
BF_K = 17
#: the defaults before the curation issue (issue 23 chose new ones on bench/dedup_quality.py)
OLD_SETTINGS = ["--threshold", "0.88", "--phash-distance", "10"]


def dataset(n: int) -> Path:
    path = ROOT / f"rows-{n}"
    if not (path / ".complete").exists():
        shutil.rmtree(path, ignore_errors=True)
        start = time.perf_counter()
        write_run(path, n)
        (path / ".complete").write_text("")
        print(f"wrote {path} in {time.perf_counter() - start:.0f} s", flush=True)
    return path


def write_run(path: Path, n: int) -> None:
    """Parts of background rows plus the previous part's planted copies; the pairs by row."""
    import pyarrow as pa

    from bench.synthetic import clustered_chunks, part_table, write_manifest
    from vlpipe.rundir import PARTS, RunDir, write_table_atomic

    run = RunDir(str(path))
    rng = np.random.default_rng(SEED)
    pending = None  # (vectors, phash, sha, source rows) of copies for the next part
    pairs, row = [], 0
    background = n - int(round(n * PLANT_SHARE * 2))  # about 2 copies per original
    for p, vectors in enumerate(clustered_chunks(background, DIM, SEED, chunk=PART_ROWS)):
        m = len(vectors)
        phash = rng.integers(0, 2**63, m, dtype=np.int64).astype(np.uint64) * 2 + 1
        sha = rng.integers(0, 2**63, (m, 2), dtype=np.int64).astype(np.uint64)
        if pending is not None:
            cv, cp, cs, src = pending
            pairs.append(np.stack([src, row + m + np.arange(len(src))], axis=1))
            vectors, phash, sha = (
                np.concatenate(x) for x in ((vectors, cv), (phash, cp), (sha, cs))
            )
        pending = _copies(rng, vectors[:m], phash[:m], sha[:m], row)
        uris = [f"synthetic/{row + i:09d}.jpg" for i in range(len(vectors))]
        table = part_table(vectors, uris)
        size = len(vectors)
        table = table.set_column(table.schema.get_field_index("phash"), "phash", pa.array(phash))
        hexes = [f"{a:016x}{b:016x}" + "0" * 32 for a, b in sha]
        table = table.set_column(table.schema.get_field_index("sha256"), "sha256", pa.array(hexes))
        for name, value in (("orig_width", 640), ("orig_height", 480), ("bytes", 50_000)):
            col = pa.array(np.full(size, value, np.int64)).cast(table.schema.field(name).type)
            table = table.set_column(table.schema.get_field_index(name), name, col)
        write_table_atomic(run.fs, run.join(PARTS, f"part-{p:05d}.parquet"), table)
        row += size
    write_manifest(run, DIM, row)
    np.savez(path / "truth.npz", pairs=np.concatenate(pairs), rows=row)


def _copies(rng, vectors, phash, sha, first_row):
    """1-3 copies of PLANT_SHARE of the rows: near vectors, near hashes, some exact bytes."""
    m = len(vectors)
    originals = rng.choice(m, int(m * PLANT_SHARE), replace=False)
    src = np.repeat(originals, rng.integers(1, 4, len(originals)))
    noise = rng.standard_normal((len(src), DIM)).astype(np.float32) / np.sqrt(DIM)
    scale = rng.uniform(0.1, 0.5, len(src)).astype(np.float32)[:, None]  # cosine 0.89-0.995
    exact = rng.random(len(src)) < 0.1
    cv = vectors[src] + np.where(exact[:, None], 0, scale * noise)
    cv /= np.linalg.norm(cv, axis=1, keepdims=True)
    flips = np.zeros(len(src), np.uint64)
    for _ in range(6):  # up to 6 random bits (a bit may flip back: 0-6 bits apart)
        bit = rng.integers(0, 64, len(src)).astype(np.uint64)
        flips ^= np.where(rng.random(len(src)) < 0.5, np.uint64(1) << bit, np.uint64(0))
    cp = phash[src] ^ np.where(exact, np.uint64(0), flips)
    cs = np.where(exact[:, None], sha[src], rng.integers(0, 2**63, (len(src), 2)).astype(np.uint64))
    return cv.astype(np.float32), cp, cs, first_row + src


def measure(n: int) -> dict:
    path = dataset(n)
    truth = np.load(path / "truth.npz")
    pairs, rows = truth["pairs"], int(truth["rows"])
    argv = [sys.executable, "-m", "vlpipe", "dedup", str(path), "--full", "--no-report", "--json"]
    old = run_child([*argv, *OLD_SETTINGS])
    print({k: v for k, v in old.output.items() if k != "histogram"}, flush=True)
    child = run_child(argv)
    print({k: v for k, v in child.output.items() if k != "histogram"}, flush=True)
    cluster = _cluster_rows(path)
    found = cluster[pairs[:, 0]] == cluster[pairs[:, 1]]
    out = {
        "rows": rows,
        "planted_pairs": len(pairs),
        "wall_s": round(child.wall_s, 1),
        "old_settings_wall_s": round(old.wall_s, 1),
        "old_settings": " ".join(OLD_SETTINGS),
        "peak_rss_mb": child.peak_rss_bytes // 2**20,
        "raw_vectors_mb": rows * DIM * 4 // 2**20,
        "planted_recall": round(float(found.mean()), 4),
        "dedup": {k: v for k, v in child.output.items() if k != "histogram"},
    }
    if n <= 2_000_000:
        out.update(brute_force(path, pairs, cluster, rows))
    return out


def _cluster_rows(path: Path) -> np.ndarray:
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    table = pq.read_table(path / "dedup" / "clusters.parquet", columns=["image_id", "cluster_id"])
    ids = table.column("image_id")
    return pc.index_in(table.column("cluster_id"), value_set=ids).to_numpy()


def brute_force(path: Path, pairs: np.ndarray, cluster: np.ndarray, rows: int) -> dict:
    """Exact top-17 over all rows for a sample of query rows; time scaled to every row."""
    import faiss
    import pyarrow.parquet as pq

    from vlpipe.dedup.run import DEFAULT_THRESHOLD

    x = np.concatenate([
        np.asarray(b.column(0).values.to_numpy(zero_copy_only=False), np.float32).reshape(-1, DIM)
        for f in sorted((path / "parts").glob("*.parquet"))
        for b in pq.ParquetFile(f).iter_batches(columns=["embedding"], batch_size=65536)
    ])  # fmt: skip
    faiss.normalize_L2(x)
    rng = np.random.default_rng(1)
    planted = np.unique(pairs[:, 0])[:10_000]
    queries = np.unique(np.concatenate([planted, rng.choice(rows, len(planted), replace=False)]))
    index = faiss.IndexFlatIP(DIM)
    index.add(x)
    start = time.perf_counter()
    sims, ids = index.search(x[queries], BF_K)
    seconds = time.perf_counter() - start
    mine = pairs[np.isin(pairs[:, 0], planted)]
    at = np.searchsorted(queries, mine[:, 0])
    hit = ((ids[at] == mine[:, 1:2]) & (sims[at] >= DEFAULT_THRESHOLD)).any(axis=1)
    ours = cluster[mine[:, 0]] == cluster[mine[:, 1]]
    return {
        "bf_queries": len(queries),
        "bf_seconds": round(seconds, 1),
        "bf_all_rows_s_estimate": round(seconds * rows / len(queries), 1),
        "bf_planted_recall": round(float(hit.mean()), 4),
        "vlpipe_planted_recall_same_pairs": round(float(ours.mean()), 4),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.dedup_scale")
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 10_000_000])
    args = parser.parse_args(argv)
    report = Report(NAME, "vlpipe dedup at 1M and 10M rows vs exact brute-force k-NN")
    results = {}
    for n in args.rows:
        results[n] = r = measure(n)
        print(r, flush=True)
        report.add(Figure(f"wall time at {n:,} rows, defaults vs the pre-issue-23 settings",
                          r["wall_s"], r["old_settings_wall_s"], "cosine 0.88, 10 bits", "s",
                          goal=1.25, higher_is_better=False))  # fmt: skip
        if n == 1_000_000:
            budget = "wall time at 1,000,000 rows vs the 10-minute budget"
            report.add(Figure(budget, r["wall_s"], 600, "10 minutes", "s", goal=1.0,
                              higher_is_better=False))  # fmt: skip
        if "bf_seconds" in r:
            report.add(Figure(f"wall time at {n:,} rows vs brute-force k-NN (scaled)",
                              r["wall_s"], r["bf_all_rows_s_estimate"], "exact k-NN", "s",
                              goal=1.0, higher_is_better=False))  # fmt: skip
            report.add(Figure(f"planted-pair recall at {n:,} rows vs brute force",
                              r["vlpipe_planted_recall_same_pairs"], r["bf_planted_recall"],
                              "exact k-NN", goal=0.98))  # fmt: skip
            report.add(Figure(f"peak RSS at {n:,} rows vs raw float32 vectors",
                              r["peak_rss_mb"], r["raw_vectors_mb"], "raw vectors", "MB",
                              goal=2.0, higher_is_better=False))  # fmt: skip
    report.details = {"runs": results, "dim": DIM, "part_rows": PART_ROWS}
    report.finish()
    return 0


if __name__ == "__main__":
    sys.exit(main())


def markdown(result: dict) -> str:
    d = result["details"]
    lines = [
        f"Synthetic {d['dim']}-d clumpy vectors in parts of {d['part_rows']:,} rows; 1% of rows"
        " are originals with 1-3 planted copies in the next part (cosine 0.89-0.995, phash 0-6"
        " bits away, one in ten byte-identical). `vlpipe dedup --full` (defaults) in a child"
        " process; brute force = exact FAISS flat top-17 for a sample of query rows, its time"
        " scaled to every row.",
        "",
        "| rows | wall s | wall s, pre-issue-23 settings | peak RSS MB | raw float32 MB |"
        " planted pairs | recall of planted pairs | duplicates found |"
        " brute force (sample, scaled s, recall) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for n, r in sorted(d["runs"].items(), key=lambda x: int(x[0])):
        bf = "-"
        if "bf_seconds" in r:
            scaled = f"{r['bf_all_rows_s_estimate']:,} s for all"
            bf = f"{r['bf_queries']:,} queries in {r['bf_seconds']} s, {scaled}"
            bf += f", recall {r['bf_planted_recall']}"
        lines.append(
            f"| {int(n):,} | {r['wall_s']} | {r.get('old_settings_wall_s', '-')} |"
            f" {r['peak_rss_mb']:,} | {r['raw_vectors_mb']:,} |"
            f" {r['planted_pairs']:,} | {r['planted_recall']} | {r['dedup']['duplicates']:,} |"
            f" {bf} |"
        )
    return "\n".join(lines)
