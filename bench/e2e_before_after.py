"""The default end-to-end run now and at an earlier commit, side by side (issue 25: the layout
moves must leave the default run's speed the same within noise).

Both sides are bench/e2e's `vlpipe` contender with bench/e2e's defaults (vlpipe-mini, batch 32,
one intra-op thread, the in-process runner; the clock starts after the model is loaded and warmed
up), on the same images, in fresh processes, rounds in alternating order; the median round counts.
The earlier side is a `git worktree` of `--before` under bench/results/tmp/trees/, run with its own
bench/contenders.py and vlpipe (cwd and PYTHONPATH set to that tree) in this virtualenv.

The default `--before` is 49cec13, the last commit before issue 25's layout moves (691f6d2:
vlpipe/transforms -> vlpipe/worker, ...). Commits after it changed more than the layout: the
OpenVINO image tower (`--backend auto`, used where OpenVINO is installed) landed later, so
`--backend torch` runs this tree's side on torch, as the earlier default did, for the layout-only
comparison; the default `auto` compares the default runs as users get them.

    python -m bench.e2e_before_after [--before 49cec13] [--backend auto|torch] [--images 256]
                                     [--rounds 3]
    python -m bench.e2e_before_after --smoke   # 6 sample images, 1 round, --before HEAD
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

from bench.common import REPO, Figure, Report, git_tree, result_name
from bench.corpus import corpus_args, describe, ensure, manifest
from bench.e2e import run_contender

NAME = "e2e_before_after"
BEFORE = "49cec13"
NOW = "now"


def measure(args) -> dict:
    csv = str(manifest(args.images, "mixed", **corpus_args(args.smoke)))
    before = f"before ({args.before})"
    trees = {NOW: REPO, before: git_tree(args.before)}
    extra = {NOW: ("--backend", args.backend), before: ()}  # the earlier contender has no flag
    runs: dict[str, list[dict]] = {name: [] for name in trees}
    for r in range(args.rounds):
        for name in list(trees)[:: 1 if r % 2 == 0 else -1]:  # alternate who goes first
            print(f"round {r + 1}: {name}", flush=True)
            result = run_contender("vlpipe", csv, args, tree=trees[name], extra=extra[name])
            runs[name].append(result)
    return {"trees": {k: str(v) for k, v in trees.items()}, "runs": runs, "before": before}


def run(args) -> dict:
    title = f"Default end-to-end run: now vs {args.before}"
    report = Report(result_name(NAME, args.smoke), title)
    m = measure(args)
    rate = {k: statistics.median(r["images_s"] for r in v) for k, v in m["runs"].items()}
    report.add(
        Figure(
            "vlpipe run (bench/e2e's vlpipe contender)", rate[NOW], rate[m["before"]],
            m["before"], "images/s", note="issue 25: the same within noise",
        )
    )  # fmt: skip
    report.details = {
        "corpus": describe(ensure(args.images, "mixed", **corpus_args(args.smoke))),
        "model": args.model,
        "batch_size": args.batch_size,
        "torch_threads": args.torch_threads,
        "backend_now": args.backend,
        "rounds": args.rounds,
        "before": m["before"],
        "trees": m["trees"],
        "runs": m["runs"],
    }
    return report.finish()


def markdown(result: dict) -> str:
    d = result["details"]
    lines = [
        f"bench/e2e's `vlpipe` contender with `{d['model']}`, batch {d['batch_size']}, torch"
        f" intra-op threads {d['torch_threads']}, on {d['corpus']['images']} corpus images; this"
        f" tree with `--backend {d['backend_now']}`, the earlier one as it was; {d['rounds']}"
        " round(s), order alternating.",
        "",
        "| tree | images/s, each round | median | peak RSS MB |",
        "|---|---|---|---|",
    ]
    for name, runs in d["runs"].items():
        rates = [r["images_s"] for r in runs]
        lines.append(
            f"| {name} | {', '.join(f'{x:.2f}' for x in rates)} |"
            f" {statistics.median(rates):.2f} | {max(r['peak_rss_mb'] for r in runs)} |"
        )
    return "\n".join(lines)


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=f"python -m bench.{NAME}", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--before", default=None, help=f"git revision [default: {BEFORE}]")
    parser.add_argument("--backend", default="auto", help="this tree's --backend (auto, torch)")
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--model", default="mini", help="mini or a vlpipe-mini directory")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--torch-threads", type=int, default=1)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument(
        "--smoke", action="store_true", help="6 sample images, batch 2, 1 round, --before HEAD"
    )
    args = parser.parse_args(argv)
    if args.smoke:
        args.images, args.rounds, args.batch_size = 6, 1, 2
    args.before = args.before or ("HEAD" if args.smoke else BEFORE)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    from bench.report import run_and_publish

    return run_and_publish(NAME, lambda: run(args), args.smoke)


if __name__ == "__main__":
    sys.exit(main())
