"""Near-duplicates at scale: `vlpipe dedup` over 1M and 10M synthetic rows with planted copies,
against exact brute-force k-NN in the same run.

Data (made once, kept under bench/results/tmp/dedup_scale/): vlpipe-mini-sized (256-d) clumpy
vectors (bench.synthetic's Gaussian mixture) in parts of 100k rows, each row with a random
phash and sha256; 1% of rows are originals that get 1-3 planted copies in the *next* part (so
pairs cross parts): the vector plus noise (cosine 0.89-0.995: down to the threshold), the
phash with 0-6 bits flipped, and one copy in ten byte-identical (same vector, phash and
sha256). `truth.npz` holds the planted pairs as run rows.

Measured: `vlpipe dedup` with today's defaults and, beside it on the same rows, with the
settings it shipped with before issue 23 part 5 (OLD_SETTINGS, hard-coded here), each in a child
process, interleaved (old, new, then new, old, ... for --rounds): wall time (the fastest round of
each) and peak RSS, and their ratio (goal: the defaults within 1.25x of the old settings' time);
recall of planted pairs (both rows in one cluster) with the defaults.
Baseline: exact k-NN (FAISS flat inner product, k=17, the rows' own float32 vectors) over a
sample of query rows (every planted row and as many random ones), timed and scaled to all
rows, and its recall of the planted pairs of the sampled rows (the pair's cosine is above the
threshold and it is in the top 17). Goals at 1M: under 10 minutes, peak RSS under 2x the raw
float32 vectors, planted-pair recall at least 0.98 of brute force's. At 10M: the same run,
streamed from the parts.

    python -m bench.dedup_scale [--rows 1000000 10000000] [--rounds 2]
    python -m bench.dedup_scale --smoke   # 20,000 rows, one round, seconds, nothing published
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
PART_ROWS = 100_000  # rows a part (below 200k rows, a fifth of them: see part_rows)
SMOKE_ROWS = 20_000
PLANT_SHARE = 0.01
SEED = 7
BF_K = 17
#: the defaults before issue 23 part 5 (the baseline: the new ones must cost at most 1.25x)
OLD_SETTINGS = ["--method", "both", "--threshold", "0.88", "--phash-distance", "10",
                "--near-threshold", "0.88"]  # fmt: skip


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
    chunk = part_rows(n)
    for p, vectors in enumerate(clustered_chunks(background, DIM, SEED, chunk=chunk)):
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


def part_rows(n: int) -> int:
    """PART_ROWS, or n / 5 below two parts' worth: copies are planted in the next part, so a run
    needs several parts (with one, nothing was planted and the benchmark failed below 100k)."""
    return PART_ROWS if n >= 2 * PART_ROWS else max(1_000, n // 5)


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


def measure(n: int, rounds: int) -> dict:
    path = dataset(n)
    truth = np.load(path / "truth.npz")
    pairs, rows = truth["pairs"], int(truth["rows"])
    argv = [sys.executable, "-m", "vlpipe", "dedup", str(path), "--full", "--no-report", "--json"]
    runs: dict[str, list] = {"old": [], "new": []}
    cluster = None
    for i in range(rounds):  # interleaved, so drift on a shared machine hits both alike
        for which in ("old", "new") if i % 2 == 0 else ("new", "old"):
            child = run_child([*argv, *OLD_SETTINGS] if which == "old" else argv)
            runs[which].append(child)
            print(which, round(child.wall_s, 1), "s", _brief(child.output), flush=True)
            if which == "new" and cluster is None:  # the defaults' clusters, before old overwrites
                cluster = _cluster_rows(path)
    new, old = (min(runs[w], key=lambda c: c.wall_s) for w in ("new", "old"))
    found = cluster[pairs[:, 0]] == cluster[pairs[:, 1]]
    out = {
        "rows": rows,
        "planted_pairs": len(pairs),
        "rounds": rounds,
        "wall_s": round(new.wall_s, 1),
        "old_settings_wall_s": round(old.wall_s, 1),
        "wall_ratio": round(new.wall_s / old.wall_s, 3),
        "wall_s_rounds": {w: [round(c.wall_s, 1) for c in runs[w]] for w in runs},
        "old_settings": " ".join(OLD_SETTINGS),
        "peak_rss_mb": max(c.peak_rss_bytes for c in runs["new"]) // 2**20,
        "old_settings_peak_rss_mb": max(c.peak_rss_bytes for c in runs["old"]) // 2**20,
        "raw_vectors_mb": rows * DIM * 4 // 2**20,
        "planted_recall": round(float(found.mean()), 4),
        "dedup": _brief(new.output),
        "old_settings_dedup": _brief(old.output),
    }
    if n <= 2_000_000:
        out.update(brute_force(path, pairs, cluster, rows))
    return out


def _brief(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if k != "histogram"}


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
    parser.add_argument("--rounds", type=int, default=2, help="old/new pairs, interleaved")
    parser.add_argument(
        "--smoke", action="store_true", help=f"{SMOKE_ROWS:,} rows, one round, nothing published"
    )
    args = parser.parse_args(argv)
    name = NAME
    if args.smoke:  # a tiny run of every step; the real result is never touched
        args.rows, args.rounds, name = [SMOKE_ROWS], 1, f"tmp/{NAME}-smoke"
    report = Report(name, "vlpipe dedup at 1M and 10M rows vs exact brute-force k-NN")
    results = {}
    for n in args.rows:
        results[n] = r = measure(n, args.rounds)
        print(r, flush=True)
        report.add(Figure(f"wall time at {n:,} rows, defaults vs the old settings (no band)",
                          r["wall_s"], r["old_settings_wall_s"], "old settings", "s",
                          goal=1.25, higher_is_better=False))  # fmt: skip
        report.add(Figure(f"peak RSS at {n:,} rows, defaults vs the old settings (no band)",
                          r["peak_rss_mb"], r["old_settings_peak_rss_mb"], "old settings", "MB",
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
    report.details = {"runs": results, "dim": DIM, "part_rows": part_rows(max(args.rows))}
    report.finish()
    if args.smoke:
        print("smoke: not published")
    return 0


if __name__ == "__main__":
    sys.exit(main())


def markdown(result: dict) -> str:
    d = result["details"]
    lines = [
        f"Synthetic {d['dim']}-d clumpy vectors in parts of {d['part_rows']:,} rows; 1% of rows"
        " are originals with 1-3 planted copies in the next part (cosine 0.89-0.995, phash 0-6"
        " bits away, one in ten byte-identical). `vlpipe dedup --full` in a child process, with"
        " its defaults and with the settings before issue 23 part 5 (old), interleaved on the"
        " same rows (the fastest round of each); brute force = exact FAISS flat top-17 for a"
        " sample of query rows, its time scaled to every row.",
        "",
        "| rows | wall s | wall s, old settings | time ratio (goal <= 1.25) | peak RSS MB |"
        " peak RSS MB, old settings | raw float32 MB | planted pairs | recall of planted pairs |"
        " duplicates found | brute force (sample, scaled s, recall) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for n, r in sorted(d["runs"].items(), key=lambda x: int(x[0])):
        bf = "-"
        if "bf_seconds" in r:
            scaled = f"{r['bf_all_rows_s_estimate']:,} s for all"
            bf = f"{r['bf_queries']:,} queries in {r['bf_seconds']} s, {scaled}"
            bf += f", recall {r['bf_planted_recall']}"
        ratio = f"{r['wall_ratio']:.2f}x" if "wall_ratio" in r else "-"
        old_rss = r.get("old_settings_peak_rss_mb")
        lines.append(
            f"| {int(n):,} | {r['wall_s']} | {r.get('old_settings_wall_s', '-')} | {ratio} |"
            f" {r['peak_rss_mb']:,} | {f'{old_rss:,}' if old_rss else '-'} |"
            f" {r['raw_vectors_mb']:,} | {r['planted_pairs']:,} | {r['planted_recall']} |"
            f" {r['dedup']['duplicates']:,} | {bf} |"
        )
    runs = [r for r in d["runs"].values() if "old_settings" in r]
    if runs:
        lines += ["", f"Old settings: `{runs[0]['old_settings']}`."]
    return "\n".join(lines)
