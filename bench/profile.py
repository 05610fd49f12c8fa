"""Profile `vlpipe run` on CPU with py-spy: where the CPU time goes, stage by stage.

py-spy samples every thread of the run process (decode threads included; idle threads are not
counted) from outside, so the profile costs the run almost nothing. Each sample is put in the first
stage whose marker frame is on its stack; samples taken before the run starts (imports, model load,
warm-up) are left out. The top functions by own time point at what to fix.

The run is profiled twice: as vlpipe is, and with caption decoding as it was before the fix the
first profile pointed to (full-prefix decoding instead of the KV cache, bench/kv_cache.py,
patched in for that process only), so the before/after throughput of that change is measured on
the same images in the same benchmark.

    python -m bench.profile [--images 256] [--rate 50] [--quick]
    python -m bench.profile --smoke   # 4 sample images, batch 2, nothing published

Needs py-spy (`pip install py-spy`).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

from bench.common import SCRATCH, Figure, Report, result_name
from bench.corpus import corpus_args, describe, ensure, manifest

NAME = "profile"
TITLE = "Profile: where `vlpipe run` spends CPU time (vlpipe-mini, CPU)"

#: (stage, function, file): a sample belongs to the first stage with that frame on its stack
STAGES = [
    ("startup (imports, model load, warm-up)", "load_model", "contenders.py"),
    ("startup (imports, model load, warm-up)", "load_model", "handlers.py"),
    ("startup (imports, model load, warm-up)", "warm_up", "contenders.py"),
    ("caption decoder: generate", "generate", "fusion.py"),
    ("caption decoder: generate", "full_prefix_generate", "kv_cache.py"),
    ("caption decoder: memory projection", "memory", "fusion.py"),
    ("joint embedding heads", "embed_grid", "model.py"),
    ("image tower (EfficientNet-Lite0)", "grid", "model.py"),
    ("captioner (transformers)", "caption", "hf.py"),
    ("embedder (transformers)", "embed_images", "hf.py"),
    ("preprocess (resize to 224, to tensor)", "preprocess", ""),
    ("JPEG decode (decode_image)", "decode_image", "decode.py"),
    ("read bytes", "read_bytes", "files.py"),
    ("write Parquet part", "write_chunk", "parquet.py"),
]
RUN = ("run_vlpipe", "contenders.py")


def record(csv: str, args, out: Path, full_prefix: bool) -> tuple[Path, dict]:
    """py-spy record of one `python -m bench.contenders vlpipe` run: raw stacks and its result."""
    # the venv's bin/ is not on PATH when the bench runs as .venv/bin/python -m bench
    spy = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if spy is None:
        raise SystemExit("error: py-spy is not installed: pip install py-spy")
    raw = out / f"profile{'-full-prefix' if full_prefix else ''}.txt"
    run_out = out / "run"
    shutil.rmtree(run_out, ignore_errors=True)
    cmd = [
        spy, "record", "--format", "raw", "--rate", str(args.rate), "--output", str(raw),
        "--", sys.executable, "-m", "bench.contenders", "vlpipe", "--manifest", csv,
        "--model", args.model, "--out", str(run_out), "--batch-size", str(args.batch_size),
        "--torch-threads", str(args.torch_threads),
        *(["--full-prefix-decoder"] if full_prefix else []),
    ]  # fmt: skip
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    shutil.rmtree(run_out, ignore_errors=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    return raw, json.loads(lines[-1])


def parse(raw: Path) -> list[tuple[list[str], int]]:
    samples = []
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            samples.append((stack.split(";"), int(count)))
    return samples


def _frame(frame: str) -> tuple[str, str]:
    """'CaptionDecoder.generate (mini/fusion.py:167)' -> ('generate', 'mini/fusion.py')."""
    name, _, where = frame.partition(" (")
    return name.rsplit(".", 1)[-1], where.rsplit(":", 1)[0]


def _on_stack(frames: list[tuple[str, str]], function: str, file: str) -> bool:
    return any(name == function and path.endswith(file) for name, path in frames)


def stage_of(stack: list[str]) -> str:
    frames = [_frame(f) for f in stack]
    for stage, function, file in STAGES:
        if _on_stack(frames, function, file):
            return stage
    return "pipeline and Beam (other)" if _on_stack(frames, *RUN) else "startup"


def breakdown(samples: list[tuple[list[str], int]]) -> tuple[Counter, Counter]:
    """Samples per stage and per leaf function, for the run's samples only (startup excluded)."""
    stages: Counter = Counter()
    leaves: Counter = Counter()
    for frames, count in samples:
        stage = stage_of(frames)
        if stage.startswith("startup"):
            continue
        stages[stage] += count
        leaves[_short(frames[-1])] += count
    return stages, leaves


def _short(frame: str) -> str:
    """'logits (vlpipe/models/mini/fusion.py:131)' -> 'logits (fusion.py:131)'."""
    name, _, where = frame.partition(" (")
    return f"{name} ({where.rsplit('/', 1)[-1]}" if where else name


VARIANTS = {"before: full-prefix caption decoding": True, "now: KV-cached caption decoding": False}


def run(args) -> dict:
    report = Report(result_name(NAME, args.smoke), TITLE)
    csv = str(manifest(args.images, "mixed", **corpus_args(args.smoke)))
    out = SCRATCH / NAME
    out.mkdir(parents=True, exist_ok=True)
    profiles, rates = {}, {}
    for variant, full_prefix in VARIANTS.items():
        raw, result = record(csv, args, out, full_prefix)
        stages, leaves = breakdown(parse(raw))
        total = sum(stages.values()) or 1
        rates[variant] = result["images"] / result["seconds"]
        profiles[variant] = {
            "images_s": round(rates[variant], 2),
            "split": {k: round(v, 1) for k, v in result["split"].items()},
            "samples": total,
            "stages": {k: round(100 * v / total, 1) for k, v in stages.most_common()},
            "top_functions": {k: round(100 * v / total, 1) for k, v in leaves.most_common(10)},
        }
        print(f"  {variant}: {rates[variant]:.2f} images/s", flush=True)
    before, after = VARIANTS
    report.add(
        Figure(
            "vlpipe run throughput", rates[after], rates[before], "before: full-prefix decoder",
            "images/s", note="KV-cached caption decoder (now) vs the full-prefix one (before)",
        )
    )  # fmt: skip
    report.details = {
        "corpus": describe(ensure(args.images, "mixed", **corpus_args(args.smoke))),
        "model": args.model,
        "torch_threads": args.torch_threads,
        "rate_hz": args.rate,
        "profiles": profiles,
    }
    return report.finish()


def markdown(result: dict) -> str:
    d = result["details"]
    lines = [
        f"`vlpipe run` over {d['corpus']['images']} images with `{d['model']}`,"
        f" {d['torch_threads']} intra-op thread(s), py-spy at {d['rate_hz']} Hz over all threads"
        " (startup excluded), once with caption decoding as it was before the KV cache and once as"
        " vlpipe is now.",
    ]
    for variant, p in d["profiles"].items():
        lines += [
            "",
            f"**{variant}**: {p['images_s']} images/s, {p['samples']} samples.",
            "",
            "| stage | share of CPU samples |",
            "|---|---|",
        ]
        lines += [f"| {k} | {v}% |" for k, v in p["stages"].items()]
        top = ", ".join(f"`{k}` {v}%" for k, v in list(p["top_functions"].items())[:6])
        lines += ["", f"Top functions by own time: {top}."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=TITLE)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--rate", type=int, default=50, help="samples per second")
    parser.add_argument("--model", default="mini")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--torch-threads", type=int, default=1,
        help="intra-op threads of every contender (0: torch's default, one per core)",
    )  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="64 images")
    parser.add_argument("--smoke", action="store_true", help="4 sample images, batch 2")
    args = parser.parse_args(argv)
    if args.quick:
        args.images = 64
    if args.smoke:
        args.images, args.batch_size = 4, 2
    from bench.report import run_and_publish

    return run_and_publish(NAME, lambda: run(args), args.smoke)


if __name__ == "__main__":
    sys.exit(main())
