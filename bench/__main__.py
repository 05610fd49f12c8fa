"""`python -m bench` (= `make bench`): every benchmark, or the ones named, each in its own process.

    python -m bench                      # all, full size (about 1.5 hours on 2 busy CPU cores)
    python -m bench --quick              # all, small sizes (about 15 minutes)
    python -m bench --smoke              # all, tiny sizes: every code path, nothing published
    python -m bench decode e2e           # a subset, by name
    python -m bench e2e --model DIR      # another vlpipe-mini directory

Each benchmark prints its figures (vlpipe, baseline, ratio, goal), the hardware and the command,
writes bench/results/NAME.json and its block of BENCHMARKS.md. `index` is the index helper's
bench/bench_index.py (build time and memory at 100k and 1M vectors), run as it is.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

from bench.common import REPO

#: name -> (module, takes --model)
BENCHMARKS = {
    "decode": ("bench.decode", False),
    "e2e": ("bench.e2e", True),
    "scaling": ("bench.scaling", True),
    "profile": ("bench.profile", True),
    "kv_cache": ("bench.kv_cache", True),
    "tower": ("bench.tower", False),
    "index": ("bench.bench_index", False),
    "gpu": ("bench.gpu", False),
    "orchestration": ("bench.orchestration", False),
    "modes": ("bench.modes", False),
    "hybrid": ("bench.hybrid", False),
    "search": ("bench.search", False),
    "dedup_quality": ("bench.dedup_quality", False),
    "dedup_scale": ("bench.dedup_scale", False),
    "quality_agreement": ("bench.quality_agreement", False),
    "mini_lowres": ("bench.mini_lowres", True),
    "mini_speed": ("bench.mini_speed", True),
    "faces": ("bench.faces", False),
    "storage_requests": ("bench.storage_requests", False),
}


def argv_for(name: str, args: argparse.Namespace) -> list[str] | None:
    module, takes_model = BENCHMARKS[name]
    if not (REPO / (module.replace(".", "/") + ".py")).exists():
        return None
    argv = [sys.executable, "-m", module]
    if args.smoke:
        if not accepts(module, "--smoke"):
            return None
        argv.append("--smoke")
    elif args.quick and accepts(module, "--quick"):
        argv.append("--quick")
    if takes_model and args.model:
        argv += ["--model", args.model]
    return argv


def accepts(module: str, flag: str) -> bool:
    """Whether a benchmark's --help lists `flag` (the index benchmark is another helper's)."""
    help_text = subprocess.run(
        [sys.executable, "-m", module, "--help"], capture_output=True, text=True, cwd=REPO
    ).stdout
    return flag in help_text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"any of {', '.join(BENCHMARKS)}")
    parser.add_argument("--quick", action="store_true", help="small sizes, one round")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, nothing published")
    parser.add_argument("--model", help="vlpipe-mini model for e2e/scaling/profile (default mini)")
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark {unknown[0]!r}: choose from {', '.join(BENCHMARKS)}")
    names = args.names or list(BENCHMARKS)
    failed, started = [], time.time()
    for name in names:
        cmd = argv_for(name, args)
        if cmd is None:
            why = "has no --smoke mode" if args.smoke else "is not in this checkout"
            print(f"\n== {name}: {BENCHMARKS[name][0]} {why}; skipped ==")
            continue
        print(f"\n== {name}: {' '.join(['python', *cmd[1:]])} ==", flush=True)
        t0 = time.time()
        code = subprocess.call(cmd, cwd=REPO)
        print(f"== {name}: {'ok' if code == 0 else f'FAILED ({code})'} in {time.time() - t0:.0f} s")
        if code:
            failed.append(name)
    print(
        f"\nbench: {len(names) - len(failed)} of {len(names)} ok in {time.time() - started:.0f} s"
    )
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
