"""End to end on CPU with vlpipe-mini: `vlpipe run` vs a naive script vs a DataLoader loop.

Every contender (see bench/contenders.py) runs in a fresh process on the same images with the same
model and batch size, and writes Parquet. The timed section starts after the model is loaded and
warmed up and ends when the last file is written; for `vlpipe run` it covers listing, the Beam
pipeline (in-process DirectRunner), decoding, inference, writing and the final count check.
vlpipe and the DataLoader loops run `--rounds` times in rotating order (the machine is shared, so
the median round counts); the naive script, ~10x slower, runs once on the first `--naive-images`
images of the same corpus (its per-image rate does not depend on how many images it sees).

Every contender runs inference with `--torch-threads` intra-op threads (default 1, the rest of the
cores decode). On a machine whose cores are already busy, torch's default (one thread per core)
makes small ops wait on preempted OpenMP threads: on our shared 2-core machine it made the same
run 3-6x slower and erratic. A full run also measures vlpipe once with torch's default, so the
figure for that setting is in the results too.

    python -m bench.e2e [--images 512] [--rounds 2] [--naive-images 64] [--quick]
    python -m bench.e2e --smoke   # 6 sample images, every contender once, nothing published

bench/e2e_before_after.py runs this benchmark's vlpipe contender on this tree and on an earlier
commit's, side by side.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
from pathlib import Path

from bench.common import REPO, SCRATCH, Figure, Report, result_name, run_child
from bench.corpus import corpus_args, describe, ensure, manifest

NAME = "e2e"
TITLE = "End to end on CPU: vlpipe-mini captions + embeddings"
LOOPS = ("vlpipe", "dataloader", "dataloader-vlpipe-decode")
DEFAULT_THREADS = "vlpipe-default-threads"
PER_CORE = "vlpipe-workers-per-core"
LABELS = {
    "vlpipe": "vlpipe run (DirectRunner)",
    "naive": "naive script, one image at a time",
    "dataloader": "DataLoader loop, plain PIL decode",
    "dataloader-vlpipe-decode": "DataLoader loop, vlpipe's decoder",
    DEFAULT_THREADS: "vlpipe run, torch's default intra-op threads",
    PER_CORE: "vlpipe run --workers <cores> (one process per core)",
}


def run_contender(
    name: str,
    csv: str,
    args,
    threads: int | None = None,
    run_workers: int = 1,
    tree: Path = REPO,
    extra: tuple[str, ...] = (),
) -> dict:
    """One contender in a fresh process; `tree` is the checkout whose bench/contenders.py and
    vlpipe it runs (another commit's, for bench/e2e_before_after.py)."""
    out = SCRATCH / NAME / name
    shutil.rmtree(out, ignore_errors=True)
    threads = args.torch_threads if threads is None else threads
    argv = [
        sys.executable, "-m", "bench.contenders", name, "--manifest", csv, "--model", args.model,
        "--out", str(out), "--batch-size", str(args.batch_size), "--workers", str(args.workers),
        "--torch-threads", str(threads), "--run-workers", str(run_workers), *extra,
    ]  # fmt: skip
    # OMP_NUM_THREADS also reaches the processes a contender starts (Beam's worker processes)
    env = {"OMP_NUM_THREADS": str(threads)} if threads else {}
    if tree != REPO:
        env["PYTHONPATH"] = str(tree)
    child = run_child(argv, env=env, cwd=tree)
    shutil.rmtree(out, ignore_errors=True)
    result = child.output
    result["images_s"] = result["images"] / result["seconds"]
    result["process_wall_s"] = round(child.wall_s, 2)
    result["peak_rss_mb"] = round(child.peak_rss_bytes / 2**20)
    print(f"  {name}: {result['images']} images, {result['images_s']:.2f} images/s", flush=True)
    return result


def measure(args) -> dict[str, list[dict]]:
    csv = str(manifest(args.images, "mixed", **corpus_args(args.smoke)))
    naive_csv = str(
        manifest(min(args.naive_images, args.images), "mixed", **corpus_args(args.smoke))
    )
    runs: dict[str, list[dict]] = {name: [] for name in (*LOOPS, "naive")}
    for r in range(args.rounds):
        order = LOOPS[r % len(LOOPS) :] + LOOPS[: r % len(LOOPS)]
        if r == 0:
            order = ("naive", *order)
        for name in order:
            runs[name].append(run_contender(name, naive_csv if name == "naive" else csv, args))
    if not args.quick:
        if args.torch_threads:  # what the thread setting itself is worth here
            runs[DEFAULT_THREADS] = [run_contender("vlpipe", csv, args, threads=0)]
        cores = len(os.sched_getaffinity(0))
        if cores > 1:  # vlpipe's own way to use every core: one worker process per core
            runs[PER_CORE] = [run_contender("vlpipe", csv, args, run_workers=cores)]
    return runs


def median_rate(runs: list[dict]) -> float:
    return statistics.median(r["images_s"] for r in runs)


def run(args) -> dict:
    report = Report(result_name(NAME, args.smoke), TITLE)
    runs = measure(args)
    rate = {name: median_rate(rs) for name, rs in runs.items()}
    vl = rate["vlpipe"]
    report.add(Figure("throughput", vl, rate["naive"], "naive script", "images/s", goal=3.0))
    report.add(
        Figure("throughput", vl, rate["dataloader"], "DataLoader loop", "images/s", goal=0.9)
    )
    report.add(
        Figure(
            "throughput", vl, rate["dataloader-vlpipe-decode"],
            "DataLoader loop + vlpipe decoder", "images/s",
            note="same decoder on both sides: what Beam and the pipeline cost",
        )
    )  # fmt: skip
    if DEFAULT_THREADS in rate:
        report.add(
            Figure(
                "vlpipe throughput by intra-op threads", vl, rate[DEFAULT_THREADS],
                f"torch's default ({runs[DEFAULT_THREADS][0]['torch_threads']} threads)",
                "images/s", note=f"vlpipe with {args.torch_threads} thread(s) vs the default",
            )
        )  # fmt: skip
    if PER_CORE in rate:
        report.add(
            Figure(
                "throughput, all cores", rate[PER_CORE], rate["naive"], "naive script",
                "images/s", note=f"vlpipe run --workers {runs[PER_CORE][0]['run_workers']}",
            )
        )  # fmt: skip
    report.details = {
        "corpus": describe(ensure(args.images, "mixed", **corpus_args(args.smoke))),
        "model": args.model,
        "torch_threads": args.torch_threads,
        "batch_size": args.batch_size,
        "dataloader_workers": args.workers,
        "rounds": args.rounds,
        "runs": runs,
    }
    return report.finish()


def per_image_split(run: dict) -> str:
    n = run["images"]
    return ", ".join(
        f"{k.removesuffix('_s').replace('_', ' ')} {1000 * v / n:.0f}"
        for k, v in run["split"].items()
    )


def markdown(result: dict) -> str:
    d = result["details"]
    c = d["corpus"]
    lines = [
        f"Model `{d['model']}` (CPU, fp32), batch {d['batch_size']}, torch intra-op threads"
        f" {d.get('torch_threads', 'default')} in every contender, DataLoader num_workers"
        f" {d['dataloader_workers']}; corpus: {c['images']} JPEGs, long side"
        f" {c['long_side_px'][0]}-{c['long_side_px'][1]} px, mean {c['mean_megapixels']} MP."
        f" {d['rounds']} rounds in rotating order; the naive script once, on a prefix.",
        "",
        "| contender | images | images/s (median; each round) | time split, ms per image |"
        " peak RSS MB | process wall s |",
        "|---|---|---|---|---|---|",
    ]
    for name, runs in d["runs"].items():
        if not runs:
            continue
        rates = "; ".join(f"{r['images_s']:.2f}" for r in runs)
        last = runs[-1]
        lines.append(
            f"| {LABELS.get(name, name)} | {last['images']} |"
            f" {median_rate(runs):.2f} ({rates}) | {per_image_split(last)} |"
            f" {last['peak_rss_mb']} | {last['process_wall_s']} |"
        )
    lines += [
        "",
        "Time split keys: `decode thread` = seconds spent decoding summed over vlpipe's decode"
        " threads (overlapped with inference, so not part of the wall time); `wait for batch` ="
        " time the DataLoader loop waited for its workers; `other` = wall time of `vlpipe run`"
        " outside inference and writing (listing, Beam, waiting for decode, the count check).",
    ]
    return "\n".join(lines)


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.e2e", description=TITLE)
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--naive-images", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--model", default="mini", help="mini or a vlpipe-mini directory")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--torch-threads", type=int, default=1,
        help="intra-op threads of every contender (0: torch's default, one per core)",
    )  # fmt: skip
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument(
        "--quick", action="store_true", help="128 images, 32 naive, 1 round, no extra vlpipe runs"
    )
    parser.add_argument(
        "--smoke", action="store_true", help="6 sample images, 2 naive, batch 2, 1 round"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.images, args.naive_images, args.rounds = 128, 32, 1
    if args.smoke:
        args.images, args.naive_images, args.rounds, args.batch_size = 6, 2, 1, 2
        args.quick = True  # the extra vlpipe runs are the same contender with other flags
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    from bench.report import run_and_publish

    return run_and_publish(NAME, lambda: run(args), args.smoke)


if __name__ == "__main__":
    sys.exit(main())
