"""What `--precision bf16` changes in vlpipe-mini's results (issue 24, part 1): the Flickr8k dev
photos through `vlpipe run` in fp32 and in bf16, then `vlpipe eval`, and the cosine between each
image's two embeddings. Quality, not speed: safe to run on a busy machine.

    python -m bench.precision_quality [--model mini|DIR] [--images N]
    python -m bench.precision_quality --smoke   # 4 of examples/images, nothing published
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from bench.common import REPO, Figure, Report, result_name
from bench.mini_lowres import FLICKR, Photos, evaluate, manifest, photos

NAME = "precision_quality"
KEYS = ("t2i_r1", "t2i_r5", "t2i_r10", "i2t_r1", "bleu4", "cider")


def run_and_eval(precision: str, model: str, p: Photos) -> tuple[dict, dict]:
    # always a fresh run (--overwrite): an earlier one may hold another model's outputs
    out = p.root / f"out-{precision}-{Path(model).name}-{len(p.names)}"
    subprocess.run([sys.executable, "-m", "vlpipe", "run", str(manifest("dev", p)),
                    "--output", str(out), "--captioner", model, "--embedder", model,
                    "--precision", precision, "--no-index", "--no-progress", "--overwrite",
                    "--embedding-dtype", "float32"],
                   check=True, cwd=REPO, stdout=subprocess.DEVNULL)  # fmt: skip
    rows = pq.read_table(out / "parts", columns=["uri", "embedding", "caption"]).to_pylist()
    return evaluate(out, p), {r["uri"]: r for r in rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.precision_quality")
    parser.add_argument("--model", default="mini")
    parser.add_argument("--images", type=int, default=1000, help="first N dev photos")
    parser.add_argument("--smoke", action="store_true", help="4 sample photos")
    args = parser.parse_args(argv)
    if args.smoke:
        args.images = 4
    elif not (FLICKR / "splits.csv").exists():
        print(f"skipped: no Flickr8k copy at {FLICKR}")
        return 0
    chosen = photos(args.smoke, NAME, args.images)
    p = Photos(chosen.data, chosen.names[: args.images], chosen.root)
    scores32, rows32 = run_and_eval("fp32", args.model, p)
    scores16, rows16 = run_and_eval("bf16", args.model, p)
    uris = sorted(rows32.keys() & rows16.keys())
    a = np.array([rows32[u]["embedding"] for u in uris], dtype=np.float32)
    b = np.array([rows16[u]["embedding"] for u in uris], dtype=np.float32)
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    same = sum(rows32[u]["caption"] == rows16[u]["caption"] for u in uris) / len(uris)
    report = Report(
        result_name(NAME, args.smoke),
        f"vlpipe-mini ({args.model}) in bf16 against fp32 on {len(uris)} dev photos",
    )
    report.add(Figure("mean embedding cosine, bf16 vs fp32", float(cos.mean()), 1.0, "fp32",
                      goal=0.999, note="issue 24: >= 0.999"))  # fmt: skip
    for key in ("t2i_r1", "bleu4"):
        report.add(Figure(f"dev {key}, bf16 vs fp32", scores16[key], scores32[key], "fp32",
                          note="issue 24: within 0.005 of fp32"))  # fmt: skip
    print("| precision | " + " | ".join(KEYS) + " |")
    print("|---" * (len(KEYS) + 1) + "|")
    for name, s in (("fp32", scores32), ("bf16", scores16)):
        print(f"| {name} | " + " | ".join(f"{s[k]:.3f}" for k in KEYS) + " |")
    print(
        f"embedding cosine mean {cos.mean():.5f} min {cos.min():.5f}; identical captions {same:.3f}"
    )
    report.details = {
        "model": args.model,
        "images": len(uris),
        "scores": {"fp32": scores32, "bf16": scores16},
        "cosine_mean": float(cos.mean()),
        "cosine_min": float(cos.min()),
        "identical_captions": same,
    }
    result = report.finish()
    if args.smoke:
        from bench.report import smoke_block

        smoke_block(NAME, result)
    return 0


def markdown(result: dict) -> str:
    d = result["details"]
    lines = [
        f"`{d['model']}` on {d['images']} Flickr8k dev photos, `vlpipe run --precision fp32` and"
        " `--precision bf16` (embeddings stored as float32), then `vlpipe eval`:",
        "",
        "| precision | " + " | ".join(KEYS) + " |",
        "|---" * (len(KEYS) + 1) + "|",
    ]
    lines += [f"| {p} | " + " | ".join(f"{s[k]:.3f}" for k in KEYS) + " |"
              for p, s in d["scores"].items()]  # fmt: skip
    lines += ["", f"Embedding cosine bf16 vs fp32: mean {d['cosine_mean']:.5f}, min"
              f" {d['cosine_min']:.5f}; identical captions:"
              f" {d['identical_captions']:.1%}."]  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
