"""Default `vlpipe run` against the default of an earlier commit (issue 24, part 5): the same
photos, the same machine, all cores, interleaved rounds.

The baseline is built from git in this benchmark's own environment: `git worktree add` of the
commit (default 55e8470, the last commit before `--precision auto` and `--backend`) under
bench/results/tmp/trees/ (bench.common.git_tree), run with the same virtualenv and PYTHONPATH
pointing at that tree. Each run is a fresh `vlpipe run` process (captions + embeddings, no
index) under /usr/bin/time, so images/s is what `vlpipe run` reports for its own work and peak
RSS is the process's high-water mark. The OpenVINO graph is converted before the first timed
round (a first-use cost, cached after). A third contender runs this tree's code with the
baseline's weights (its `vlpipe/models/mini/weights`, passed as --captioner/--embedder), so the
speed-up of the code alone and that of the default as shipped are both measured.

    python -m bench.cpu_default [--baseline-commit 55e8470] [--images 500] [--rounds 3] [--smoke]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

from bench.common import REPO, SCRATCH, Figure, Report, git_tree
from bench.mini_lowres import FLICKR, dev_names

NAME = "cpu_default"
ROOT = SCRATCH / NAME
RATE = re.compile(r"processed (\d+) in ([\d.]+) s \(([\d.]+) images/s\)")
BASELINE = "55e8470"
OLD = "vlpipe, baseline's weights"


def photos(n: int, smoke: bool) -> str:
    ROOT.mkdir(parents=True, exist_ok=True)
    if smoke:  # the repo's sample images: no Flickr8k needed
        names = sorted((REPO / "examples" / "images").glob("*.jpg"))[:n]
    else:
        names = [FLICKR / "images" / x for x in dev_names()[:n]]
    path = ROOT / f"photos-{n}.csv"
    path.write_text("uri\n" + "".join(f"{p}\n" for p in names))
    return str(path)


def one_run(tree: Path, manifest: str, model: str | None = None) -> tuple[float, float]:
    """(images/s as vlpipe reports it, peak RSS in MB) of a default `vlpipe run` (with `model`
    as captioner and embedder when given)."""
    extra = ["--captioner", model, "--embedder", model] if model else []
    out = ROOT / "out"
    shutil.rmtree(out, ignore_errors=True)
    proc = subprocess.run(
        ["/usr/bin/time", "-f", "peak_rss_kb=%M", sys.executable, "-m", "vlpipe", "run",
         manifest, "--output", str(out), "--no-index", "--no-progress", *extra],
        cwd=tree, capture_output=True, text=True, check=True,
        env={**os.environ, "PYTHONPATH": str(tree)},
    )  # fmt: skip
    rate = RATE.search(proc.stdout)
    rss = re.search(r"peak_rss_kb=(\d+)", proc.stderr)
    if not (rate and rss):
        raise RuntimeError(f"unexpected output:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return float(rate.group(3)), int(rss.group(1)) / 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cpu_default")
    parser.add_argument("--baseline-commit", default=BASELINE)
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="8 sample images, 1 round")
    args = parser.parse_args(argv)
    if args.smoke:
        args.images, args.rounds = 8, 1
    elif not (FLICKR / "splits.csv").exists():
        print(f"skipped: no Flickr8k copy at {FLICKR}")
        return 0
    manifest = photos(args.images, args.smoke)
    base = f"baseline {args.baseline_commit}"
    base_tree = git_tree(args.baseline_commit)
    old_weights = str(base_tree / "vlpipe" / "models" / "mini" / "weights")
    runs = {"vlpipe": (REPO, None), OLD: (REPO, old_weights), base: (base_tree, None)}
    for tree, model in ((REPO, None), (REPO, old_weights)):  # convert and cache graphs, untimed
        one_run(tree, photos(4, smoke=True), model)
    rates: dict[str, list[float]] = {k: [] for k in runs}
    rss: dict[str, list[float]] = {k: [] for k in runs}
    for r in range(args.rounds):
        for name in list(runs)[:: 1 if r % 2 == 0 else -1]:
            tree, model = runs[name]
            rate, peak = one_run(tree, manifest, model)
            rates[name].append(rate)
            rss[name].append(peak)
            print(f"round {r + 1}: {name} {rate:.1f} images/s, peak RSS {peak:.0f} MB")
    name = f"tmp/{NAME}-smoke" if args.smoke else NAME  # a smoke run publishes nothing
    report = Report(name, f"default vlpipe run vs {base}, {args.images} photos, all cores")
    med = {k: statistics.median(v) for k, v in rates.items()}
    report.add(
        Figure(
            "default vlpipe run with the baseline's weights",
            med[OLD],
            med[base],
            base,
            "images/s",
            goal=2.5,
            note="issue 24: the code alone, at least 2.5x",
        )
    )
    report.add(Figure("default vlpipe run as shipped (captions + embeddings)", med["vlpipe"],
                      med[base], base, "images/s", goal=1.5,
                      note="issue 24: the shipped default model, at least 1.5x"))  # fmt: skip
    report.add(Figure("peak RSS of the default run", max(rss["vlpipe"]), max(rss[base]), base,
                      "MB", goal=1.0, higher_is_better=False,
                      note="issue 24: no higher than before"))  # fmt: skip
    report.details = {
        "images": args.images,
        "rates": rates,
        "peak_rss_mb": rss,
        "smoke": args.smoke,
    }
    report.finish()
    return 0


def markdown(result: dict) -> str:
    d = result["details"]
    lines = [
        f"Default `vlpipe run` (captions + embeddings, no index, all cores) on {d['images']}"
        " Flickr8k dev photos; each round a fresh process per tree, order alternating.",
        "",
        "| tree | images/s per round | peak RSS (MB) per round |",
        "|---|---|---|",
    ]
    for name, rates in d["rates"].items():
        rss = ", ".join(f"{x:.0f}" for x in d["peak_rss_mb"][name])
        lines.append(f"| {name} | {', '.join(f'{x:.1f}' for x in rates)} | {rss} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
