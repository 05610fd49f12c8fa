"""Cost of every model family on this CPU: images/s and peak RSS at a realistic batch.

Each family at full size with random weights (published architectures, configs in
bench/family_builders.py, no hub) through vlpipe's own model handler, each in its own processes
with a time cap (bench/families.py), beside the BLIP-base + CLIP ViT-B/32 pair every figure is
compared with (ratio = family images/s / pair images/s). Captioners generate --max-tokens tokens
per caption (random weights never stop early: an upper bound on a real caption of that length).
Precision per family is chosen so the model fits 24 GiB beside other jobs, and printed.

    python -m bench.models_cpu                      # every family, full size (long)
    python -m bench.models_cpu --only qwen2-vl-2b   # some families (the pair always runs too)
    python -m bench.models_cpu --smoke              # tiny models, every code path, seconds each
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from bench.common import Figure, Report, load, save
from bench.families import FAMILIES, PAIR, run_family, table

NAME = "models_cpu"
TITLE = "Model families on CPU: images/s and peak RSS"
RUN_COMMAND = "python -m bench.models_cpu"


def measure(args) -> dict:
    # a smoke run never overwrites a real measurement
    report = Report(f"tmp/{NAME}-smoke" if args.smoke else NAME, TITLE)
    names = [PAIR, *[n for n in args.only if n != PAIR]] if args.only else list(FAMILIES)
    rows = []
    with tempfile.TemporaryDirectory(prefix="vlpipe-models-cpu-") as tmp:
        for name in names:
            print(f"-- {name}", flush=True)
            row = run_family(FAMILIES[name], args, Path(tmp) / name.replace("+", "_"))
            print(f"   {row}", flush=True)
            rows.append(row)
    rows = rows[:1] + _earlier_rows(args, names) + rows[1:]
    pair = rows[0]
    for row in rows[1:]:
        if "images_s" in row and "images_s" in pair:
            report.add(
                Figure(f"{row['title']}, {row['precision']}, batch {row['batch']}",
                       row["images_s"], pair["images_s"], "BLIP-base + CLIP B/32", "images/s")
            )  # fmt: skip
    report.details = {
        "models": "tiny random (code-path check)" if args.smoke else "full size, random weights",
        "max_tokens": args.max_tokens,
        "batches": args.batches,
        "rows": rows,
        "note": "with --only, families not rerun keep earlier rows; ratios use this run's pair",
    }
    return report.finish()


def _earlier_rows(args, names: list[str]) -> list[dict]:
    """Rows of families measured earlier and not rerun now: `--only` adds to the table."""
    previous = load(NAME) if args.only and not args.smoke else None
    rows = (previous or {}).get("details", {}).get("rows", [])
    return [r for r in rows if r.get("family") not in names and "images_s" in r]


def not_measured() -> dict:
    """The placeholder record: an earlier real measurement is kept instead."""
    previous = load(NAME)
    if previous and previous.get("details", {}).get("rows"):
        return previous
    result = {"name": NAME, "title": TITLE, "command": RUN_COMMAND, "figures": [], "details": {}}
    save(NAME, result)
    return result


def markdown(result: dict) -> str:
    rows = result.get("details", {}).get("rows")
    if not rows:
        return (
            "Not measured yet. On a quiet machine, run\n\n"
            f"    {RUN_COMMAND}\n\n"
            "(every family at full size with random weights, each in its own process with a"
            " time cap; `--only NAME,...` for some) to fill this table."
        )
    d = result["details"]
    lines = [
        f"{d['models']}; captions of {d['max_tokens']} tokens (random weights never stop"
        f" early), {d['batches']} timed batches per family after a warm-up; images decoded and"
        " preprocessed untimed. Ratio: family images/s over the BLIP-base + CLIP B/32 pair's.",
        "",
        *table(rows),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.models_cpu", description=TITLE)
    parser.add_argument("--only", type=lambda s: [n for n in s.split(",") if n], default=[],
                        help=f"comma-separated families: {', '.join(FAMILIES)}")  # fmt: skip
    parser.add_argument("--smoke", action="store_true", help="tiny models, every code path")
    parser.add_argument("--batches", type=int, default=3, help="timed batches per family")
    parser.add_argument("--batch", type=int, default=None, help="[default: per family]")
    parser.add_argument("--max-tokens", type=int, default=20)
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per family")
    parser.add_argument("--images-dir", help="a folder of JPEGs instead of the bench corpus")
    parser.add_argument("--placeholder", action="store_true",
                        help="write the not-measured block only")  # fmt: skip
    args = parser.parse_args(argv)
    unknown = [n for n in args.only if n not in FAMILIES]
    if unknown:
        parser.error(f"unknown family {unknown[0]!r}: choose from {', '.join(FAMILIES)}")
    args.device, args.precision, args.tiny = "cpu", None, args.smoke
    if args.smoke:
        args.batch, args.batches, args.max_tokens = args.batch or 2, 1, min(args.max_tokens, 4)
        args.timeout = min(args.timeout, 300)
    result = not_measured() if args.placeholder else measure(args)
    if not args.smoke:
        from bench.report import update

        update(NAME, result)
    failed = [r for r in result.get("details", {}).get("rows", []) if "error" in r]
    return 1 if failed and args.smoke else 0


if __name__ == "__main__":
    sys.exit(main())
