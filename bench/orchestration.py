"""Orchestration at bucket scale: what the driver and the reading cost as the corpus grows.

1. Manifests of N uris that do not exist (every input becomes a read-failure row, so the figure is
   orchestration alone: planning, resume, reading, failure parts, the count check), at 100k, 1M
   and 10M rows: wall time, peak RSS of the run (the in-process runner: driver and worker are one
   process) and inputs/s. Goals: peak RSS and time per input at the largest size within 1.2x of
   the smallest; the largest run under 300 s. Baseline: a plain loop over the same manifest (read
   a row group, try to open each path, write a failure Parquet per 1,000 rows) in the same run.
2. Tars: bytes each process reads of each tar (strace), divided by the tar's size, with
   `--workers 2` (goal at most 1.05 per tar, 0 for the driver); and the time from start to the
   first written part with 10 vs 1,000 tars (goal within 1.5x: planning does not walk the tars).

    python -m bench.orchestration [--sizes 100000,1000000,10000000] [--quick]
    python -m bench.orchestration --smoke   # 100 and 400 rows, small tars, nothing published
"""

from __future__ import annotations

import argparse
import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from collections import defaultdict
from pathlib import Path

from bench.common import SCRATCH, Figure, Report, result_name, run_child

NAME = "orchestration"
TITLE = "Orchestration at bucket scale: driver memory, time per input, tar bytes read"
ROOT = SCRATCH / "orchestration"
VLPIPE = [sys.executable, "-m", "vlpipe", "run"]


def missing_manifest(n: int) -> Path:
    """A Parquet manifest of n uris under a folder that does not exist (pyarrow's default row
    groups, as a user's writer would make them)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = ROOT / f"missing-{n}.parquet"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        uris = pa.array([f"/nonexistent/bucket/img-{i:09d}.jpg" for i in range(n)])
        pq.write_table(pa.table({"uri": uris}), path)
    return path


BASELINE = """
import os, sys, json, time, pyarrow as pa, pyarrow.parquet as pq
src, out = sys.argv[1], sys.argv[2]
os.makedirs(out, exist_ok=True)
start, n, rows, part = time.perf_counter(), 0, [], 0
def flush():
    global rows, part
    pq.write_table(pa.Table.from_pylist(rows), f"{out}/f-{part:06d}.parquet"); rows = []; part += 1
pf = pq.ParquetFile(src)
for g in range(pf.num_row_groups):
    for uri in pf.read_row_group(g, columns=["uri"]).column(0).to_pylist():
        try:
            open(uri, "rb").close()
        except OSError as exc:
            rows.append({"uri": uri, "stage": "read", "error": str(exc)})
        n += 1
        if len(rows) >= 1000:
            flush()
if rows:
    flush()
print(json.dumps({"n": n, "seconds": time.perf_counter() - start}))
"""


def run_vlpipe(source: Path, out: Path, *extra: str) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    argv = [*VLPIPE, str(source), "--output", str(out), "--no-index", "--no-progress", *extra]
    argv = [sys.executable, "-c", _JSON_WRAPPER, *argv[1:]]
    child = run_child(argv)
    return {"wall_s": round(child.wall_s, 1), "peak_rss_mb": child.peak_rss_bytes // 2**20,
            **child.output}  # fmt: skip


# `vlpipe run` prints text; this wrapper runs it and prints its counts as the last JSON line.
_JSON_WRAPPER = """
import json, re, subprocess, sys
proc = subprocess.run([sys.executable, *sys.argv[1:]], capture_output=True, text=True)
sys.stderr.write(proc.stderr[-3000:])
m = re.search(r"seen (\\d+): written (\\d+), failed (\\d+)", proc.stdout)
if proc.returncode or not m:
    sys.stderr.write(proc.stdout[-3000:]); sys.exit(proc.returncode or 1)
print(json.dumps(dict(zip(("seen", "written", "failed"), map(int, m.groups())))))
"""


def manifests(report: Report, sizes: list[int]) -> dict:
    runs = {}
    for n in sizes:
        source = missing_manifest(n)
        runs[n] = run_vlpipe(source, ROOT / f"out-{n}")
        assert runs[n]["seen"] == n == runs[n]["failed"], runs[n]
        runs[n]["inputs_s"] = round(n / runs[n]["wall_s"])
        runs[n]["us_per_input"] = round(1e6 * runs[n]["wall_s"] / n, 2)
        print(f"manifest {n}: {runs[n]}", flush=True)
    small, large = sizes[0], sizes[-1]
    base = run_child([sys.executable, "-c", BASELINE, str(missing_manifest(large)),
                      str(ROOT / "baseline-out")])  # fmt: skip
    shutil.rmtree(ROOT / "baseline-out", ignore_errors=True)
    report.add(Figure(f"peak RSS at {large:,} vs {small:,} rows", runs[large]["peak_rss_mb"],
                      runs[small]["peak_rss_mb"], f"{small:,} rows", "MB", goal=1.2,
                      higher_is_better=False))  # fmt: skip
    report.add(Figure(f"time per input at {large:,} vs {small:,} rows",
                      runs[large]["us_per_input"], runs[small]["us_per_input"], f"{small:,} rows",
                      "us", goal=1.2, higher_is_better=False))  # fmt: skip
    report.add(Figure(f"wall time at {large:,} rows", runs[large]["wall_s"], 300.0,
                      "the 5-minute budget", "s", goal=1.0, higher_is_better=False))  # fmt: skip
    report.add(Figure(f"wall time at {large:,} rows vs a plain loop", runs[large]["wall_s"],
                      base.wall_s, "plain pyarrow + open() loop", "s", higher_is_better=False,
                      note="the loop plans nothing, resumes nothing, checks no count"))  # fmt: skip
    return {str(n): r for n, r in runs.items()} | {"baseline_wall_s": round(base.wall_s, 1)}


def make_tars(folder: Path, count: int, images: int) -> list[Path]:
    """`count` WebDataset tars of `images` small JPEGs (with a .txt each)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"shard-{i:05d}.tar" for i in range(count)]
    if all(p.exists() for p in paths):
        return paths
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (120, 80, 40)).save(buf, "JPEG")
    jpeg = buf.getvalue()
    for t, path in enumerate(paths):
        with tarfile.open(path, "w") as tar:
            for i in range(images):
                for name, data in ((f"{t:05d}{i:06d}.jpg", jpeg), (f"{t:05d}{i:06d}.txt", b"x")):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return paths


def tar_reads(report: Report, model: str, per_tar: int = 1100, shard: int = 400) -> dict:
    """strace every read of the tars by every process of a `--workers 2` run."""
    tars = make_tars(ROOT / f"tars-2x{per_tar}", 2, per_tar)
    out, log = ROOT / "out-tars", ROOT / "strace.log"
    shutil.rmtree(out, ignore_errors=True)
    argv = [*VLPIPE, str(tars[0].parent / "*.tar"), "--output", str(out), "--no-index",
            "--no-progress", "--workers", "2", "--shard-size", str(shard), "--captioner", model,
            "--embedder", model]  # fmt: skip
    paths = [a for p in tars for a in ("-P", str(p))]
    trace = ["strace", "-f", "-qq", "-e", "trace=read,pread64", "-y", *paths, "-o", str(log)]
    start = time.perf_counter()
    proc = subprocess.run([*trace, "--", *argv], capture_output=True, text=True)
    wall = time.perf_counter() - start
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    driver = _first_pid(log)
    by = defaultdict(int)  # (pid, tar) -> bytes
    for line in log.read_text().splitlines():
        m = re.match(r"(\d+)\s+p?read(?:64)?\(\d+<([^>]+)>.*\)\s+=\s+(\d+)", line)
        if m:
            by[(int(m.group(1)), m.group(2))] += int(m.group(3))
    ratios = {str(t): sum(b for (pid, p), b in by.items() if p == str(t)) / t.stat().st_size
              for t in tars}  # fmt: skip
    readers = {str(t): sorted({pid for (pid, p) in by if p == str(t)}) for t in tars}
    driver_bytes = sum(b for (pid, _), b in by.items() if pid == driver)
    report.add(Figure("bytes read of each tar / its size (worst tar)", max(ratios.values()),
                      1.0, "the tar's size", "x", goal=1.05, higher_is_better=False))  # fmt: skip
    report.add(Figure("tar bytes read by the driver", driver_bytes, 1.0, "one byte", "B",
                      goal=0.0, higher_is_better=False))  # fmt: skip
    return {"per_tar": ratios, "images_per_tar": per_tar,
            "readers": {k: len(v) for k, v in readers.items()},
            "driver_bytes": driver_bytes, "wall_s": round(wall, 1)}  # fmt: skip


def _first_pid(log: Path) -> int:
    """strace's first process is the one it started: the driver. Its pid is the smallest one
    traced (children get larger pids), also when it never reads a tar."""
    pids = [int(line.split()[0]) for line in log.read_text().splitlines() if line[:1].isdigit()]
    return min(pids) if pids else -1


def first_part(report: Report, model: str, counts: tuple[int, int]) -> dict:
    """Seconds from start to the first part file, with few and with many tars."""
    seconds = {}
    for count in counts:
        tars = make_tars(ROOT / f"tars-{count}x20", count, 20)
        out = ROOT / f"out-first-{count}"
        shutil.rmtree(out, ignore_errors=True)
        argv = [*VLPIPE, str(tars[0].parent / "*.tar"), "--output", str(out), "--no-index",
                "--no-progress", "--captioner", model, "--embedder", model]  # fmt: skip
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while not any((out / "parts").glob("part-*.parquet")) if (out / "parts").exists() else 1:
            assert proc.poll() is None, f"run over {count} tars ended without a part"
            time.sleep(0.02)
        seconds[count] = round(time.perf_counter() - start, 2)
        proc.kill()
        proc.wait()
    few, many = counts
    report.add(Figure(f"seconds to the first part, {many} vs {few} tars", seconds[many],
                      seconds[few], f"{few} tars", "s", goal=1.5,
                      higher_is_better=False))  # fmt: skip
    return {str(k): v for k, v in seconds.items()}


def run(args) -> dict:
    report = Report(result_name(NAME, args.smoke), TITLE)
    sizes = sorted(int(s) for s in args.sizes.split(","))
    per_tar, shard, counts = (12, 5, (2, 6)) if args.smoke else (1100, 400, (10, 1000))
    runs = manifests(report, sizes)
    tars = tar_reads(report, args.model, per_tar, shard) if shutil.which("strace") else None
    report.details = {
        "manifests": runs,
        "tars": tars or "strace missing",
        "first_part_s": first_part(report, args.model, counts),
        "model": args.model,
    }
    return report.finish()


def markdown(result: dict) -> str:
    d = result["details"]
    lines = [
        "Manifest of N uris that do not exist (`vlpipe run M --output O --no-index"
        " --no-progress`, in-process runner: one process is driver and worker).",
        "",
        "| rows | wall s | peak RSS MB | inputs/s | us per input |",
        "|---|---|---|---|---|",
    ]
    for n, r in d["manifests"].items():
        if isinstance(r, dict):
            lines.append(
                f"| {int(n):,} | {r['wall_s']} | {r['peak_rss_mb']} | {r['inputs_s']:,} |"
                f" {r['us_per_input']} |"
            )
    lines += ["", f"Plain loop over the largest manifest: {d['manifests']['baseline_wall_s']} s."]
    tars = d["tars"]
    if isinstance(tars, dict):
        lines += [
            "",
            f"Tars (2 x {tars.get('images_per_tar', 1100):,} images, `--workers 2`, strace):"
            " bytes read / size per tar"
            f" {', '.join(f'{v:.3f}' for v in tars['per_tar'].values())}; processes reading each"
            f" tar {list(tars['readers'].values())}; driver read {tars['driver_bytes']} bytes.",
        ]
    first = d["first_part_s"]
    lines += ["", f"Seconds to the first part (model {d['model']}): " +
              ", ".join(f"{k} tars {v} s" for k, v in first.items()) + "."]  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.orchestration", description=TITLE)
    parser.add_argument("--sizes", default="100000,1000000,10000000")
    parser.add_argument("--model", default="mini")
    parser.add_argument("--quick", action="store_true", help="sizes 10000,100000")
    parser.add_argument("--smoke", action="store_true", help="sizes 100,400, 2 x 12 tar images")
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes = "10000,100000"
    if args.smoke:
        args.sizes = "100,400"
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from bench.report import run_and_publish

    return run_and_publish(NAME, lambda: run(args), args.smoke)


if __name__ == "__main__":
    sys.exit(main())
