"""`vlpipe run` throughput of two vlpipe-mini models on the same photos: a candidate (for example
one on the Lite1 or Lite2 image tower) against a baseline (default: the previous shipped weights,
or any model directory). Issue 17 keeps vlpipe-mini at 10 images/s or more with captions at one
intra-op thread on CPU.

Each model runs `vlpipe run` (captions + embeddings, no index) in a fresh process with
OMP_NUM_THREADS=1 on the first `--images` Flickr8k dev photos; rounds alternate the order, the
median round counts. images/s is what `vlpipe run` reports for its own run (listing, decode,
inference, write), so model load and interpreter start are outside it.

    python -m bench.mini_speed --model DIR [--baseline mini|DIR] [--images 256] [--rounds 2]
    python -m bench.mini_speed --smoke   # 4 of examples/images, 1 round, nothing published
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys

from bench.common import REPO, SCRATCH, Figure, Report, result_name
from bench.mini_lowres import FLICKR, photos

NAME = "mini_speed"
ROOT = SCRATCH / NAME
RATE = re.compile(r"processed (\d+) in ([\d.]+) s \(([\d.]+) images/s\)")


def manifest(n: int, smoke: bool) -> str:
    """A manifest of the first n dev photos (read in place); sample photos in a smoke run."""
    p = photos(smoke, NAME, n)
    p.root.mkdir(parents=True, exist_ok=True)
    path = p.root / f"photos-{n}.csv"
    path.write_text("uri\n" + "".join(f"{p.data / 'images' / x}\n" for x in p.names[:n]))
    return str(path)


def images_per_second(model: str, manifest: str) -> float:
    out = ROOT / "out"
    shutil.rmtree(out, ignore_errors=True)
    proc = subprocess.run(
        [sys.executable, "-m", "vlpipe", "run", manifest, "--output", str(out),
         "--captioner", model, "--embedder", model, "--no-index", "--no-progress"],
        cwd=REPO, capture_output=True, text=True, check=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    match = RATE.search(proc.stdout)
    if not match:
        raise RuntimeError(f"no rate in vlpipe run's output:\n{proc.stdout[-2000:]}")
    return float(match.group(3))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.mini_speed")
    parser.add_argument("--model", default="mini", help="the candidate: mini or a model dir")
    parser.add_argument("--baseline", default="mini")
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--smoke", action="store_true", help="4 sample photos, 1 round")
    args = parser.parse_args(argv)
    if args.smoke:
        args.images, args.rounds = 4, 1
    elif not (FLICKR / "splits.csv").exists():
        print(f"skipped: no Flickr8k copy at {FLICKR}")
        return 0
    title = f"vlpipe-mini throughput: {args.model} vs {args.baseline}"
    report = Report(result_name(NAME, args.smoke), title)
    csv = manifest(args.images, args.smoke)
    rates: dict[str, list[float]] = {args.model: [], args.baseline: []}
    for r in range(args.rounds):
        order = [args.model, args.baseline][:: 1 if r % 2 == 0 else -1]
        for model in order:
            rates[model].append(images_per_second(model, csv))
            print(f"round {r + 1}: {model} {rates[model][-1]:.1f} images/s")
    cand, base = (statistics.median(rates[m]) for m in (args.model, args.baseline))
    report.add(Figure("vlpipe run, captions + embeddings, 1 intra-op thread", cand,
                      base, args.baseline, "images/s",
                      note=f"issue 17: at least 10 images/s (candidate {cand:.1f})"))  # fmt: skip
    report.details = {"images": args.images, "rates": rates}
    result = report.finish()
    if args.smoke:
        from bench.report import smoke_block

        smoke_block(NAME, result)
    return 0


def markdown(result: dict) -> str:
    d = result["details"]
    lines = [
        f"`vlpipe run` (captions + embeddings, no index) on the first {d['images']} Flickr8k dev"
        " photos, OMP_NUM_THREADS=1, rounds alternating; images/s as `vlpipe run` reports it.",
        "",
        "| model | images/s per round |",
        "|---|---|",
    ]
    lines += [f"| {m} | {', '.join(f'{x:.1f}' for x in r)} |" for m, r in d["rates"].items()]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
