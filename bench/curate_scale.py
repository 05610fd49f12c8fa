"""`vlpipe curate` at 1M and 10M rows: it streams, so its peak RSS stays flat as the run grows,
against pyarrow reading the same columns whole and filtering in memory, on the same files.

Data (fabricated with pyarrow in a temporary folder under bench/results/tmp/, removed after):
a run directory as `vlpipe run` leaves it, without running models: manifest.json and parts of
--part-rows rows in the result schema (no embeddings: a Parquet manifest never reads them;
columns not drawn here are null) with a uri, a source text and caption, a user column
`license`, the seven quality signals drawn from spreads like real photos', and a dedup output
as `vlpipe dedup` leaves it (dedup/clusters.parquet in the dedup state's part order, 10% of the
rows in clusters of 4), so `--dedup` measures curate's own pass over the clusters (in lockstep
with the parts), not the clustering: bench/dedup_scale.py measures that.

Measured at each size, each in a fresh process: peak RSS (the larger of the RSS sampled every
0.1 s with its children and the process's own high-water mark, getrusage), and wall time:
- `vlpipe curate RUN --to SUBSET --where RULE1 --where RULE2 --format parquet` (RULES), and the
  same with `--dedup`;
- baseline: pyarrow reads the parts' columns that curate reads (one `pq.read_table` of the parts
  folder), filters them with the same rules in memory and writes the same manifest columns.
Goals: vlpipe's peak RSS at the largest size within 1.25x of its RSS at the smallest (flat), and
below the baseline's at the largest size.

    python -m bench.curate_scale [--rows 1000000 10000000] [--part-rows 10000] [--smoke]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import SCRATCH, Figure, Report, run_child

NAME = "curate_scale"
RULES = (
    "sharpness >= 10 AND brightness BETWEEN 0.2 AND 0.9",
    "entropy >= 3 AND license != 'cc-by-nc'",
)
CLUSTER = 4  # rows per fabricated near-duplicate cluster
CLUSTERED_SHARE = 10  # one group of CLUSTER rows in this many is a cluster
LICENSES = ("cc-by", "cc0", "cc-by-nc")

VLPIPE_CHILD = """
import json, resource, sys, time
from vlpipe.cli import main
start = time.perf_counter()
try:
    main(sys.argv[1:], prog_name="vlpipe")
except SystemExit as exc:
    if exc.code:
        raise
summary = json.load(open(sys.argv[sys.argv.index("--to") + 1] + "/curate.json"))
print(json.dumps({"seconds": time.perf_counter() - start, "rows": summary["rows"],
                  "written": summary["written"], "duplicates": summary["duplicates"],
                  "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

BASELINE_CHILD = """
import json, resource, sys, time
import pyarrow as pa, pyarrow.compute as pc, pyarrow.parquet as pq
parts, out = sys.argv[1], sys.argv[2]
start = time.perf_counter()
columns = ["uri", "text", "caption", "license", "sharpness", "brightness", "entropy"]
table = pq.read_table(parts, columns=columns)
f = pc.field
keep = ((f("sharpness") >= 10) & (f("brightness") >= 0.2) & (f("brightness") <= 0.9)
        & (f("entropy") >= 3) & (f("license") != "cc-by-nc"))
kept = table.filter(keep)
pq.write_table(pa.table({"url": kept["uri"], "caption": pc.coalesce(kept["text"], kept["caption"]),
                         "license": kept["license"]}), out, compression="zstd")
print(json.dumps({"seconds": time.perf_counter() - start, "rows": table.num_rows,
                  "written": kept.num_rows,
                  "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def write_run(path: Path, rows: int, part_rows: int, seed: int = 7) -> None:
    """Parts, manifest.json and a dedup output for `rows` fabricated rows."""
    import pyarrow.parquet as pq

    from bench.synthetic import write_manifest
    from vlpipe.rundir import RunDir

    (path / "parts").mkdir(parents=True)
    rng = np.random.default_rng(seed)
    names = []
    for p, start in enumerate(range(0, rows, part_rows)):
        n = min(part_rows, rows - start)
        name = f"part-{p:06d}.parquet"
        table = part(rng, start, n, f"{path}/images/")
        pq.write_table(table, path / "parts" / name, compression="zstd")
        names.append([name, n])
    write_manifest(RunDir(str(path)), 1, rows)
    write_dedup(path, names)


def _ids(start: int, n: int, prefix: str, suffix: str = ""):
    return _names(np.arange(start, start + n), prefix, suffix)


def _names(rows: np.ndarray, prefix: str, suffix: str = ""):
    """prefix + the row number in 12 digits + suffix, as an Arrow string array (vectorised)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    digits = pc.utf8_lpad(pc.cast(pa.array(rows), pa.string()), 12, "0")
    return pc.binary_join_element_wise(prefix, digits, suffix, "")


def part(rng, start: int, n: int, folder: str):
    """One part's rows in the result schema (plus `license`); signals spread as on photos. The
    uris name files that are not there: the report's thumbnails say so, quickly."""
    import pyarrow as pa

    from vlpipe.schema import result_schema

    words = pa.array([f"a photo of thing {i}" for i in range(1000)])
    drawn = {
        "image_id": _ids(start, n, "id"),
        "uri": _ids(start, n, folder, ".jpg"),
        "text": words.take(rng.integers(0, 1000, n)),
        "caption": words.take(rng.integers(0, 1000, n)),
        "sharpness": rng.lognormal(np.log(300), 1.5, n),
        "brightness": np.clip(rng.normal(0.45, 0.18, n), 0, 1),
        "contrast": np.clip(rng.normal(0.2, 0.07, n), 0, 0.5),
        "colorfulness": np.clip(rng.gamma(2.0, 0.1, n), 0, 1.8),
        "entropy": np.clip(rng.normal(7.2, 1.0, n), 0, 8),
        "grayscale": rng.random(n) < 0.03,
        "border": np.where(rng.random(n) < 0.05, rng.random(n) * 0.4, 0.0),
        "license": pa.array(LICENSES).take(rng.integers(0, len(LICENSES), n)),
    }
    schema = result_schema(1, embeddings=False, extra=[pa.field("license", pa.string())])
    return pa.table(
        [pa.array(drawn[f.name], f.type) if f.name in drawn else pa.nulls(n, f.type)
         for f in schema],
        schema=schema,
    )  # fmt: skip


def write_dedup(path: Path, names: list[list]) -> None:
    """dedup/clusters.parquet (a row per run row, in part order), state.json and summary.json as
    `vlpipe dedup` leaves them: every CLUSTERED_SHARE-th group of CLUSTER rows is a cluster whose
    first row represents it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from vlpipe.dedup.output import CLUSTER_SCHEMA

    rows = sum(n for _, n in names)
    (path / "dedup" / "state").mkdir(parents=True)
    with pq.ParquetWriter(path / "dedup" / "clusters.parquet", CLUSTER_SCHEMA) as writer:
        for start in range(0, rows, 1_000_000):
            row = np.arange(start, min(rows, start + 1_000_000))
            grouped = (row // CLUSTER) % CLUSTERED_SHARE == 0
            rep = np.where(grouped, row - row % CLUSTER, row)
            table = pa.table({
                "image_id": _ids(start, len(row), "id"),
                "cluster_id": _names(rep, "id"),
                "is_representative": rep == row,
                "cluster_size": np.where(grouped, CLUSTER, 1).astype(np.int32),
                "nearest_id": pa.nulls(len(row), pa.string()),
                "similarity": pa.nulls(len(row), pa.float32()),
                "method": pa.array(np.where(grouped & (rep != row), "phash", None)),
            }, schema=CLUSTER_SCHEMA)  # fmt: skip
            writer.write_table(table)
    state = {"version": 1, "settings": {"method": "fabricated"}, "parts": names,
             "trained_rows": {}, "indexes": []}  # fmt: skip
    (path / "dedup" / "state" / "state.json").write_text(json.dumps(state))
    (path / "dedup" / "summary.json").write_text(json.dumps({"images": rows}))


def measure(rows: int, part_rows: int, folder: Path) -> dict:
    path = folder / f"rows-{rows}"
    start = time.perf_counter()
    write_run(path, rows, part_rows)
    made = time.perf_counter() - start
    print(f"fabricated {rows:,} rows in {made:.0f} s", flush=True)
    where = [a for rule in RULES for a in ("--where", rule)]
    out = {"rows": rows, "fabricate_s": round(made, 1)}
    for key, extra in (("vlpipe", []), ("vlpipe_dedup", ["--dedup"])):
        argv = ["curate", str(path), "--to", str(folder / f"subset-{rows}-{key}"), *where,
                "--format", "parquet", *extra]  # fmt: skip
        child = run_child([sys.executable, "-c", VLPIPE_CHILD, *argv])
        out[key] = _figures(child)
        print(key, out[key], flush=True)
    child = run_child([sys.executable, "-c", BASELINE_CHILD, str(path / "parts"),
                       str(folder / f"baseline-{rows}.parquet")])  # fmt: skip
    out["baseline"] = _figures(child)
    print("baseline", out["baseline"], flush=True)
    if out["baseline"]["written"] != out["vlpipe"]["written"]:
        raise RuntimeError(f"the baseline kept {out['baseline']['written']:,} rows, vlpipe "
                           f"{out['vlpipe']['written']:,}: not the same rules")  # fmt: skip
    shutil.rmtree(path)  # the next size needs the disk, not these rows
    return out


def _figures(child) -> dict:
    o = child.output
    peak = max(child.peak_rss_bytes // 2**20, round(o["maxrss_mb"]))  # sampling misses spikes
    return {"wall_s": round(child.wall_s, 1), "peak_rss_mb": peak,
            "sampled_rss_mb": child.peak_rss_bytes // 2**20, "maxrss_mb": round(o["maxrss_mb"]),
            "rows": o["rows"], "written": o["written"],
            **({"duplicates": o["duplicates"]} if "duplicates" in o else {})}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.curate_scale")
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--part-rows", type=int, default=10_000)
    parser.add_argument("--smoke", action="store_true", help="2,000 and 20,000 rows, not saved")
    args = parser.parse_args(argv)
    if args.smoke:
        args.rows, args.part_rows = [2_000, 20_000], 1_000
    name = f"tmp/{NAME}-smoke" if args.smoke else NAME  # a smoke run publishes nothing
    report = Report(name, "vlpipe curate at 1M and 10M rows: peak RSS vs a whole-table filter")
    SCRATCH.mkdir(parents=True, exist_ok=True)
    runs = {}
    with tempfile.TemporaryDirectory(dir=SCRATCH, prefix=f"{NAME}-") as tmp:
        for n in sorted(args.rows):
            runs[n] = measure(n, args.part_rows, Path(tmp))
    low, high = min(runs), max(runs)
    for n, r in runs.items():
        report.add(Figure(f"peak RSS at {n:,} rows vs pyarrow whole-table filter",
                          r["vlpipe"]["peak_rss_mb"], r["baseline"]["peak_rss_mb"],
                          "pyarrow read_table + filter", "MB", goal=1.0 if n == high else None,
                          higher_is_better=False))  # fmt: skip
    for key, label in (("vlpipe", ""), ("vlpipe_dedup", " with --dedup")):
        report.add(Figure(f"peak RSS{label} at {high:,} rows vs at {low:,} rows",
                          runs[high][key]["peak_rss_mb"], runs[low][key]["peak_rss_mb"],
                          f"{low:,} rows", "MB", goal=1.25, higher_is_better=False))  # fmt: skip
    share = f"1 group of {CLUSTER} rows in {CLUSTERED_SHARE}"
    report.details = {"runs": runs, "rules": list(RULES), "part_rows": args.part_rows,
                      "clustered_share": share}  # fmt: skip
    report.finish()
    if args.smoke:
        print("smoke: not published")
    return 0


def markdown(result: dict) -> str:
    d = result["details"]
    lines = [
        "A fabricated run (pyarrow, no models): parts of"
        f" {d['part_rows']:,} rows in the result schema with a uri, text, caption, a `license`"
        f" column and the quality signals; a dedup output with {d['clustered_share']} clustered."
        " Each command in a fresh process; `--dedup` reads the clusters (it does not cluster).",
        f" Rules: `--where {d['rules'][0]!r} --where {d['rules'][1]!r}`; baseline: one"
        " `pq.read_table` of the parts' columns, filtered in memory, same manifest written.",
        "",
        "| rows | curate: wall s / peak RSS MB | curate --dedup: wall s / peak RSS MB |"
        " pyarrow whole-table: wall s / peak RSS MB | rows written | duplicates dropped |",
        "|---|---|---|---|---|---|",
    ]
    for n, r in sorted(d["runs"].items(), key=lambda x: int(x[0])):
        v, dd, b = r["vlpipe"], r["vlpipe_dedup"], r["baseline"]
        lines.append(
            f"| {int(n):,} | {v['wall_s']} / {v['peak_rss_mb']:,} |"
            f" {dd['wall_s']} / {dd['peak_rss_mb']:,} | {b['wall_s']} / {b['peak_rss_mb']:,} |"
            f" {v['written']:,} | {dd['duplicates']:,} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
