"""Scaling: `vlpipe run` on a small and a 5x larger corpus: time per image and peak memory.

Linear time means the same seconds per image at both sizes (goal: within 15%); flat memory means
the same peak RSS (goal: within 1.2x), because a run holds one shard at a time per worker, never
the corpus. Peak RSS is sampled every 0.1 s over the run process and all its children. The larger
corpus starts with the smaller one (image i is the same file in both).

The index build at 100k and 1M vectors is bench/bench_index.py (`python -m bench index`).

    python -m bench.scaling [--sizes 2000,10000] [--quick]
    python -m bench.scaling --smoke   # 3 and 6 sample images, batch 2, nothing published
"""

from __future__ import annotations

import argparse
import sys

from bench.common import Figure, Report, result_name
from bench.corpus import corpus_args, describe, ensure, manifest
from bench.e2e import run_contender

NAME = "scaling"
TITLE = "Scaling: time per image and peak memory as the corpus grows"


def run(args) -> dict:
    report = Report(result_name(NAME, args.smoke), TITLE)
    sizes = sorted(int(s) for s in args.sizes.split(","))
    corpus = corpus_args(args.smoke)
    ensure(sizes[-1], "mixed", **corpus)  # generate first, so corpus making is not timed
    runs = {}
    for n in sizes:
        runs[n] = run_contender("vlpipe", str(manifest(n, "mixed", **corpus)), args)
        runs[n]["seconds_per_image"] = runs[n]["seconds"] / n
    small, large = runs[sizes[0]], runs[sizes[-1]]
    report.add(
        Figure(
            f"time per image, {sizes[-1]} vs {sizes[0]} images",
            1000 * large["seconds_per_image"], 1000 * small["seconds_per_image"],
            f"{sizes[0]} images", "ms", goal=1.15, higher_is_better=False,
        )
    )  # fmt: skip
    report.add(
        Figure(
            f"peak RSS, {sizes[-1]} vs {sizes[0]} images", large["peak_rss_mb"],
            small["peak_rss_mb"], f"{sizes[0]} images", "MB", goal=1.2, higher_is_better=False,
        )
    )  # fmt: skip
    report.details = {
        "corpus": describe(ensure(sizes[-1], "mixed", **corpus)),
        "model": args.model,
        "batch_size": args.batch_size,
        "runs": {str(n): r for n, r in runs.items()},
    }
    return report.finish()


def markdown(result: dict) -> str:
    d = result["details"]
    lines = [
        f"`vlpipe run` with `{d['model']}`, batch {d['batch_size']}, default shard size, one"
        " process; corpus from the same generator (mixed sizes).",
        "",
        "| images | timed s | ms per image | images/s | process wall s | peak RSS MB |"
        " shards: decode / infer / write s |",
        "|---|---|---|---|---|---|---|",
    ]
    for n, r in d["runs"].items():
        s = r["split"]
        lines.append(
            f"| {n} | {r['seconds']:.1f} | {1000 * r['seconds_per_image']:.1f} |"
            f" {r['images_s']:.2f} | {r['process_wall_s']} | {r['peak_rss_mb']} |"
            f" {s['decode_thread_s']:.1f} / {s['infer_s']:.1f} / {s['write_s']:.1f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import os

    parser = argparse.ArgumentParser(prog="python -m bench.scaling", description=TITLE)
    parser.add_argument("--sizes", default="2000,10000", help="two corpus sizes, comma-separated")
    parser.add_argument("--model", default="mini")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--torch-threads", type=int, default=1,
        help="intra-op threads of every contender (0: torch's default, one per core)",
    )  # fmt: skip
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--quick", action="store_true", help="sizes 200,1000")
    parser.add_argument("--smoke", action="store_true", help="sizes 3,6 (sample images), batch 2")
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes = "200,1000"
    if args.smoke:
        args.sizes, args.batch_size = "3,6", 2
    from bench.report import run_and_publish

    return run_and_publish(NAME, lambda: run(args), args.smoke)


if __name__ == "__main__":
    sys.exit(main())
