"""Index and search: build time and peak memory, warm query latency and recall, cold CLI search.

    python -m bench.bench_index             # 100k and 1M vectors (about 30 min on 2 busy cores)
    python -m bench.bench_index --quick     # 20k and 100k vectors
    python -m bench.bench_index --smoke     # 2k vectors, seconds, nothing published

Data: synthetic clustered unit vectors (bench/synthetic.py, 256-d like vlpipe-mini's joint
space) written as real fp16 Parquet parts of 50k rows with a manifest, i.e. a real run directory.
Every contender runs in its own process (wall time and peak RSS of that process):

* build: `build_index(kind="auto")` against a plain script a user would write (read every part's
  embedding column with pyarrow, one `IndexFlatIP`), and against vlpipe's own exact build;
* warm query: one query at a time through `Searcher.search_vectors` (id map lookup included), the
  auto index against the exact flat index over the same vectors, with recall@10 of the former
  against the latter on held-out noisy queries (a different seed from the build's tuning set);
* cold search: `vlpipe search "..." --index RUN` from process start to printed results on a 100k
  index, with the phases (imports, index open, embedder load, query) timed in a separate process.
  The embedder is vlpipe-mini when its weights are present, else the tiny random CLIP
  (bench/hf_tiny.py), whose 32-d space sets the vectors' dimension for that run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

from bench.bench_index_markdown import markdown, write_markdown
from bench.common import SCRATCH, Figure, Report, result_name, run_child

RUNS = SCRATCH / "index-runs"
DIM = 256
PART_ROWS = 50_000
QUERIES = 1000
COLD_ROUNDS = 5
GOALS = {"cold_search_s": 2.0, "warm_query_ms_1m": 20.0, "recall_at_10": 0.95}


# ---- run directories --------------------------------------------------------------------------


def synthetic_run(
    n: int, dim: int, embedder: dict | None = None, tag: str = "synthetic", root: Path = RUNS
) -> Path:
    """A cached run dir of n vectors: parts written once, reused by every contender."""
    from bench.synthetic import write_manifest, write_synthetic_run
    from vlpipe.rundir import RunDir

    path = root / f"{tag}-n{n}-d{dim}"
    done = path / ".complete"
    if not done.exists():
        start = time.perf_counter()
        part_rows = min(PART_ROWS, max(1, n // 4))  # a few parts even in a smoke run
        write_synthetic_run(str(path), n, dim, part_rows=part_rows, embedder=embedder)
        done.write_text("")
        print(f"wrote {path} in {time.perf_counter() - start:.0f} s", flush=True)
    elif embedder is not None:
        write_manifest(RunDir(str(path)), dim, n, embedder)
    return path


def variant(run: Path, name: str) -> Path:
    """Another run dir over the same parts (a symlink), so each index kind gets its own index/."""
    path = run.with_name(f"{run.name}-{name}")
    path.mkdir(exist_ok=True)
    if not (path / "parts").exists():
        os.symlink(run / "parts", path / "parts")
    (path / "manifest.json").write_text((run / "manifest.json").read_text())
    return path


# ---- child processes (each prints one JSON line) ----------------------------------------------


def child_build(run: str, kind: str) -> dict:
    from vlpipe.index.build import build_index

    start = time.perf_counter()
    meta = build_index(run, kind=kind, rebuild=True, progress=False)
    keep = ("kind", "factory", "count", "search_params", "recall_at_10", "estimated_bytes")
    return {"seconds": time.perf_counter() - start, **{k: meta.get(k) for k in keep}}


def child_plain(run: str) -> dict:
    """The baseline a user would write: whole embedding column in memory, one exact index."""
    import faiss
    import numpy as np
    import pyarrow.parquet as pq

    start = time.perf_counter()
    table = pq.read_table(Path(run) / "parts", columns=["embedding"])
    column = table.column("embedding").combine_chunks()
    dim = column.type.list_size
    vectors = column.values.to_numpy(zero_copy_only=False).astype(np.float32).reshape(-1, dim)
    faiss.normalize_L2(vectors)
    index = faiss.IndexFlatIP(dim)
    index.add(vectors)
    faiss.write_index(index, str(Path(run) / "plain.faiss"))
    os.remove(Path(run) / "plain.faiss")
    return {"seconds": time.perf_counter() - start, "count": index.ntotal}


def child_latency(auto_run: str, flat_run: str, nq: int) -> dict:
    """Per-query latency (one query per call) of both indexes, recall@10 of auto vs exact."""
    import numpy as np

    from vlpipe.index.tune import make_queries, recall_at_k
    from vlpipe.search.searcher import Searcher

    approx, exact = Searcher.open(auto_run), Searcher.open(flat_run)
    rng = np.random.default_rng(2024)
    sample = np.stack([exact._index.reconstruct(int(i)) for i in rng.choice(exact.size, nq)])
    queries = make_queries(sample, seed=2024)
    result = {}
    for name, searcher in (("auto", approx), ("flat", exact)):
        searcher.search_vectors(queries[:5], 10)  # warm up: pages, caches, thread pool
        times, ids = [], []
        for q in queries:
            start = time.perf_counter()
            hits = searcher.search_vectors(q[None], 10)[0]
            times.append((time.perf_counter() - start) * 1000)
            ids.append([h.image_id for h in hits])
        result[name] = {
            "median_ms": statistics.median(times),
            "p95_ms": float(np.percentile(times, 95)),
            "ids": ids,
        }
    row_of = {i: n for n, i in enumerate(exact._idmap.column("image_id").to_pylist())}
    to_rows = [[row_of[i] for i in hits] for hits in result["auto"].pop("ids")]
    truth = [[row_of[i] for i in hits] for hits in result["flat"].pop("ids")]
    result["recall_at_10"] = recall_at_k(np.array(to_rows), np.array(truth))
    result["meta"] = {k: approx.meta[k] for k in ("kind", "factory", "search_params")}
    return result


def child_cold_phases(run: str, query: str) -> dict:
    """Where a cold search spends its time (this process was started just for it)."""
    t0 = time.perf_counter()
    import faiss  # noqa: F401

    from vlpipe.search.searcher import Searcher

    t1 = time.perf_counter()
    searcher = Searcher.open(run, device="cpu")
    t2 = time.perf_counter()
    searcher._load_text_queries()  # what a text search loads (no torch for vlpipe-mini on CPU)
    t3 = time.perf_counter()
    searcher.search_text([query], 10)
    t4 = time.perf_counter()
    return {
        "import_index_modules_s": t1 - t0,
        "open_index_s": t2 - t1,
        "load_embedder_s": t3 - t2,
        "first_query_s": t4 - t3,
        "heavy_modules": sorted(
            m for m in ("torch", "transformers", "apache_beam") if m in sys.modules
        ),
    }


CHILDREN = {
    "build": child_build,
    "plain": child_plain,
    "latency": child_latency,
    "cold": child_cold_phases,
}


def child(name: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "bench.bench_index", "--child", name, *args]


# ---- the benchmark ------------------------------------------------------------------------------


def bench_size(n: int, dim: int, report: Report, nq: int, root: Path = RUNS) -> dict:
    run = synthetic_run(n, dim, root=root)
    auto_run, flat_run = variant(run, "auto"), variant(run, "flat")
    row: dict = {"vectors": n, "dim": dim}
    for name, argv in (
        ("auto", child("build", str(auto_run), "auto")),
        ("flat", child("build", str(flat_run), "flat")),
        ("plain", child("plain", str(run))),
    ):
        print(f"[{n}] build {name} ...", flush=True)
        done = run_child(argv)
        row[f"build_{name}"] = {
            **done.output,
            "wall_s": done.wall_s,
            "peak_rss_mb": done.peak_rss_bytes / 2**20,
        }
    print(f"[{n}] warm latency ...", flush=True)
    row["latency"] = run_child(child("latency", str(auto_run), str(flat_run), str(nq))).output
    size = f"{n // 1000}k" if n < 1_000_000 else f"{n / 1e6:g}M"
    auto, plain = row["build_auto"], row["build_plain"]
    report.add(
        Figure(
            f"build, {size} vectors",
            auto["wall_s"],
            plain["wall_s"],
            "plain script, exact",
            unit="s",
            higher_is_better=False,
            note=f"{auto['kind']} {auto['factory']}",
        )
    )
    report.add(
        Figure(
            f"build peak RSS, {size} vectors",
            auto["peak_rss_mb"],
            plain["peak_rss_mb"],
            "plain script, exact",
            unit="MB",
            higher_is_better=False,
        )
    )
    lat = row["latency"]
    report.add(
        Figure(
            f"warm query, {size} vectors",
            lat["auto"]["median_ms"],
            lat["flat"]["median_ms"],
            "vlpipe exact flat",
            unit="ms",
            higher_is_better=False,
            note=f"recall@10 {lat['recall_at_10']:.3f}",
        )
    )
    return row


def cold_embedder(root: Path = RUNS) -> tuple[str, dict, int]:
    """vlpipe-mini when it loads, else a tiny random CLIP built under the scratch folder."""
    from vlpipe.models.registry import load_embedder

    try:
        embedder, name = load_embedder("mini", device="cpu"), "mini"
    except Exception:  # noqa: BLE001 - weights not shipped yet: fall back, and say so
        from bench.hf_tiny import build_tiny_clip

        name = build_tiny_clip(root / "tiny-clip")
        embedder = load_embedder(name, device="cpu")
    record = {"name": name, "config": embedder.describe(), "fingerprint": embedder.fingerprint()}
    return name, record, embedder.dim


def bench_cold(
    n: int,
    report: Report,
    query: str = "a dog running on the grass",
    root: Path = RUNS,
    rounds: int = COLD_ROUNDS,
) -> dict:
    name, record, dim = cold_embedder(root)
    tag = "mini" if name == "mini" else "tinyclip"
    run = synthetic_run(n, dim, embedder=record, tag=tag, root=root)
    auto_run, flat_run = variant(run, "auto"), variant(run, "flat")
    for path, kind in ((auto_run, "auto"), (flat_run, "flat")):
        run_child(child("build", str(path), kind))
    walls = {"auto": [], "flat": []}
    for _ in range(rounds):  # interleaved rounds: load changes hit both alike
        for kind, path in (("auto", auto_run), ("flat", flat_run)):
            argv = [sys.executable, "-m", "vlpipe", "search", query, "--index", str(path), "--json"]
            walls[kind].append(run_child(argv).wall_s)
    phases = run_child(child("cold", str(auto_run), query)).output
    cold = {kind: statistics.median(v) for kind, v in walls.items()}
    size = f"{n // 1000}k"
    report.add(
        Figure(
            f"cold `vlpipe search`, {size} vectors",
            cold["auto"],
            cold["flat"],
            "same CLI, exact flat index",
            unit="s",
            higher_is_better=False,
            note=f"embedder {tag}, median of {rounds}",
        )
    )
    return {
        "embedder": tag,
        "embedder_name": name,
        "dim": dim,
        "vectors": n,
        "query": query,
        "walls_s": walls,
        "median_s": cold,
        "phases": phases,
    }


def goals(rows: list[dict], cold: dict) -> list[dict]:
    out = [
        {
            "goal": "cold `vlpipe search` < 2 s (100k)",
            "value": cold["median_s"]["auto"],
            "met": cold["median_s"]["auto"] < GOALS["cold_search_s"],
        }
    ]
    for row in rows:
        lat = row["latency"]
        out.append(
            {
                "goal": f"recall@10 >= 0.95 ({row['vectors']:,} vectors)",
                "value": lat["recall_at_10"],
                "met": lat["recall_at_10"] >= GOALS["recall_at_10"],
            }
        )
        if row["vectors"] >= 1_000_000:
            out.append(
                {
                    "goal": "warm query < 20 ms (1M)",
                    "value": lat["auto"]["median_ms"],
                    "met": lat["auto"]["median_ms"] < GOALS["warm_query_ms_1m"],
                }
            )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.bench_index", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="20k and 100k vectors")
    parser.add_argument("--sizes", help="comma-separated vector counts [default: 100000,1000000]")
    parser.add_argument("--queries", type=int, default=QUERIES, help="warm queries per index")
    parser.add_argument("--no-markdown", action="store_true", help="do not touch BENCHMARKS.md")
    parser.add_argument(
        "--smoke", action="store_true", help="2k vectors, 20 queries, nothing published"
    )
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        name, *rest = args.child
        if name == "latency":
            rest[2] = int(rest[2])
        print(json.dumps(CHILDREN[name](*rest)))
        return 0
    sizes = (
        [int(s) for s in args.sizes.split(",")]
        if args.sizes
        else ([20_000, 100_000] if args.quick else [100_000, 1_000_000])
    )
    root, cold_n, rounds = RUNS, 100_000, COLD_ROUNDS
    if args.smoke:  # fresh data, so every step runs; BENCHMARKS.md untouched
        sizes, args.queries, cold_n, rounds = [2_000], 20, 2_000, 1
        root = SCRATCH / "index-runs-smoke"
        shutil.rmtree(root, ignore_errors=True)
    report = Report(result_name("index", args.smoke), "Index and search")
    rows = [bench_size(n, DIM, report, args.queries, root) for n in sizes]
    cold = bench_cold(cold_n, report, root=root, rounds=rounds)
    report.details = {"sizes": rows, "cold": cold, "goals": goals(rows, cold)}
    result = report.finish()
    print(markdown(result))
    if not (args.no_markdown or args.smoke):
        write_markdown(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
