"""Task modes on CPU: what `--captioner none` (embeddings only) is worth, end to end.

1. Embeddings only with a full-size CLIP ViT-B/32 (random weights, built offline by
   `bench.hf_tiny.build_full_size_clip_b32`): `vlpipe run CSV --output O --captioner none
   --embedder CLIP_DIR --no-index --no-progress --batch-size 32` vs `clip-retrieval inference`
   (the PyPI package) on the same images with the same weights, `--input_format files --enable_text
   False --enable_metadata False --batch_size 32 --num_prepro_workers 2`, on CPU. Goal (issue 24
   part 5): vlpipe at least 3x clip-retrieval's images/s. vlpipe runs with its defaults
   (`--precision auto --backend auto`: on CPU the image tower as an OpenVINO graph, bf16 where
   the CPU has it natively; docs/precision.md); its first run on a machine converts the tower and
   caches the graph (VLPIPE_CACHE), which lands in round 0 and the median round leaves out.
2. vlpipe-mini embeddings only (`--captioner none`) vs the same run with captions too (both mini).
   Goal: at least 1.25x.

clip-retrieval pins versions that do not fit vlpipe's environment, so it lives in its own venv,
bench/.venv-clip-retrieval (git-ignored), made on first use with torch 2.14.1 / torchvision 0.29.1
(the pair that installs here), clip-retrieval 2.45.0 and setuptools < 81 (its `clip` package still
imports pkg_resources). Its transformers (4.x) cannot read the tokenizer files that vlpipe's
transformers (5.x) wrote, so it is given a view of the same model folder: config, weights and
image preprocessor linked, plus OpenAI's CLIP BPE tokenizer (from the `clip` package it installs)
written in the 4.x format. clip-retrieval tokenizes with its own `clip.tokenize` anyway and embeds
no text here; both contenders' embeddings are compared, row by row, to show the same model ran.

Each contender is one CLI process, started fresh, on the same images (vlpipe reads a CSV manifest
of them, clip-retrieval a folder of links to them), timed from process start to exit: images/s
covers interpreter start, imports, model load (and clip-retrieval's warm-up), reading, inference
and writing. Unlike bench/e2e, whose clock starts after the model is loaded, nothing can be left
out here from outside clip-retrieval's process; its own batch-loop time is recorded beside it.
Every contender gets `--torch-threads` intra-op threads (default 1, through OMP_NUM_THREADS and
MKL_NUM_THREADS: see bench/e2e on why one thread on a shared 2-core machine) and no GPU
(CUDA_VISIBLE_DEVICES is empty). Rounds run in rotating order; the median round counts.

    python -m bench.modes [--images 256] [--rounds 3] [--torch-threads 1] [--quick]
    python -m bench.modes --smoke   # 4 sample images, 1 round, nothing published (the first
                                    # run makes clip-retrieval's venv and the CLIP: minutes)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

from bench.clip_retrieval import (
    clip_retrieval_check,
    clip_retrieval_python,
    clip_retrieval_view,
    image_folder,
)
from bench.common import REPO, SCRATCH, Figure, Report, result_name, run_child
from bench.corpus import corpus_args, describe, ensure, manifest

NAME = "modes"
TITLE = "Task modes on CPU: embeddings only vs clip-retrieval, and vs captions + embeddings"
ROOT = SCRATCH / NAME
BATCH = 32

CONTENDERS = ("vlpipe-clip", "clip-retrieval", "mini-embed", "mini-both")
LABELS = {
    "vlpipe-clip": "vlpipe run, embeddings only, CLIP B/32",
    "clip-retrieval": "clip-retrieval inference, CLIP B/32",
    "mini-embed": "vlpipe run, embeddings only, vlpipe-mini",
    "mini-both": "vlpipe run, captions + embeddings, vlpipe-mini",
}

# Runs one CLI, times it from start to exit, and prints that as the last JSON line (run_child
# reads it; its PeakRss sums this wrapper, the CLI and every process the CLI starts). Stdlib only.
_TIMED = """
import json, subprocess, sys, time
start = time.perf_counter()
proc = subprocess.run(sys.argv[1:], capture_output=True, text=True)
seconds = time.perf_counter() - start
sys.stderr.write(proc.stderr[-3000:])
if proc.returncode:
    sys.stderr.write(proc.stdout[-3000:])
    sys.exit(proc.returncode)
print(json.dumps({"seconds": seconds, "stdout": proc.stdout[-4000:]}))
"""

# Run with each venv's Python under the contenders' environment: what they will actually get.
_VERSIONS = """
import json, sys, torch
from importlib.metadata import version
names = sys.argv[1:]
print(json.dumps({"torch_threads": torch.get_num_threads(),
                  **{n: version(n) for n in names}}))
"""


# -- set-up: the model (clip-retrieval's venv, model view and input: bench/clip_retrieval.py) --


def clip_dir() -> Path:
    """The full-size random CLIP ViT-B/32 (seeded: the same weights every time), built once."""
    path = ROOT / "clip-b32"
    if not (path / "model.safetensors").exists():
        print(f"building a random full-size CLIP ViT-B/32 in {path}", file=sys.stderr)
        code = "import sys; from bench.hf_tiny import build_full_size_clip_b32 as b; b(sys.argv[1])"
        subprocess.run([sys.executable, "-c", code, str(path)], cwd=REPO, check=True)
    return path


def child_env(threads: int) -> dict[str, str]:
    env = {"HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": "", "TOKENIZERS_PARALLELISM": "false"}
    if threads:  # torch reads OMP_NUM_THREADS for its intra-op pool; MKL for its BLAS calls
        env |= {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    return env


def probe(python: Path | str, threads: int, *packages: str) -> dict:
    """Torch intra-op threads and package versions that `python` gets under the children's env."""
    env = {**os.environ, **child_env(threads)}
    argv = [str(python), "-c", _VERSIONS, *packages]
    proc = subprocess.run(argv, capture_output=True, text=True, check=True, env=env)
    return json.loads(proc.stdout.strip().splitlines()[-1])


# -- the contenders ----------------------------------------------------------------------------


def commands(csv: Path, folder: Path, model: Path, view: Path, cr_python: Path) -> dict:
    """Each contender's argv (the CLI itself, as a user types it), writing to ROOT/out/NAME."""

    def vlpipe(name: str) -> list[str]:
        out = ROOT / "out" / name
        return [sys.executable, "-m", "vlpipe", "run", str(csv), "--output", str(out)]

    quiet = ["--no-index", "--no-progress"]
    cli = cr_python.parent / "clip-retrieval"
    return {
        "vlpipe-clip": [*vlpipe("vlpipe-clip"), "--captioner", "none", "--embedder", str(model),
                        *quiet, "--batch-size", str(BATCH)],
        "clip-retrieval": [str(cli), "inference", "--input_dataset", str(folder),
                           "--output_folder", str(ROOT / "out" / "clip-retrieval"),
                           "--input_format", "files", "--clip_model", f"hf_clip:{view}",
                           "--enable_text", "False", "--enable_metadata", "False",
                           "--batch_size", str(BATCH), "--num_prepro_workers", "2"],
        "mini-embed": [*vlpipe("mini-embed"), "--captioner", "none", *quiet],
        "mini-both": [*vlpipe("mini-both"), *quiet],
    }  # fmt: skip


def shown(argv: list[str]) -> str:
    """argv as a person types it from the repository root: `vlpipe run`, relative paths."""
    if argv[:3] == [sys.executable, "-m", "vlpipe"]:
        argv = ["vlpipe", *argv[3:]]
    out = []
    for a in argv:
        prefix = "hf_clip:" if a.startswith("hf_clip:") else ""
        path = a.removeprefix(prefix)
        if path.startswith(str(REPO) + "/"):
            a = prefix + os.path.relpath(path, REPO)
        out.append(a)
    return shlex.join(out)


def run_contender(name: str, argv: list[str], out: Path, images: int, threads: int) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    child = run_child([sys.executable, "-c", _TIMED, *argv], env=child_env(threads))
    result = {"images": images, "seconds": round(child.output["seconds"], 2)}
    result["images_s"] = images / child.output["seconds"]
    result["process_wall_s"] = round(child.wall_s, 2)
    result["peak_rss_mb"] = round(child.peak_rss_bytes / 2**20)
    stdout = child.output["stdout"]
    if name == "clip-retrieval":
        result |= clip_retrieval_check(out, images)
    else:
        result |= vlpipe_check(stdout, images)
    print(f"  {name}: {images} images, {result['images_s']:.2f} images/s", flush=True)
    return result


def vlpipe_check(stdout: str, images: int) -> dict:
    """Every image written, none failed; vlpipe's own run time and time in shards."""
    m = re.search(r"seen (\d+): written (\d+), failed (\d+)", stdout)
    if not m or [int(g) for g in m.groups()] != [images, images, 0]:
        raise RuntimeError(f"vlpipe did not write all {images} images:\n{stdout[-2000:]}")
    info = {}
    if m := re.search(r"processed \d+ in ([\d.]+) s", stdout):
        info["run_s"] = float(m.group(1))
    if m := re.search(r"time in shards: (.*)", stdout):
        for k, v in re.findall(r"(\w+) ([\d.]+) s", m.group(1)):
            info[k] = float(v)
    return info


def embeddings(name: str, out: Path) -> dict[str, object]:
    """file name -> embedding, from either contender's output."""
    import numpy as np
    import pyarrow.parquet as pq

    if name == "clip-retrieval":
        names = pq.read_table(out / "metadata" / "metadata_0.parquet").column("image_path")
        emb = np.load(out / "img_emb" / "img_emb_0.npy").astype(np.float32)
        return {Path(p).name: e for p, e in zip(names.to_pylist(), emb, strict=True)}
    table = pq.read_table(out / "parts", columns=["uri", "embedding"])
    emb = np.array(table.column("embedding").to_pylist(), dtype=np.float32)
    return {Path(u).name: e for u, e in zip(table.column("uri").to_pylist(), emb, strict=True)}


def agreement(a: dict, b: dict) -> dict:
    """Cosine similarity of the two contenders' embeddings of each image (1.0: the same model;
    the preprocessing differs a little), and of different images for scale."""
    import numpy as np

    keys = sorted(a)
    x = np.stack([a[k] for k in keys])
    y = np.stack([b[k] for k in keys])
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y /= np.linalg.norm(y, axis=1, keepdims=True)
    same = (x * y).sum(1)
    other = (x * np.roll(y, 1, axis=0)).sum(1)
    return {"images": len(keys), "same_image_mean": round(float(same.mean()), 5),
            "same_image_min": round(float(same.min()), 5),
            "other_image_mean": round(float(other.mean()), 4)}  # fmt: skip


def measure(args) -> dict:
    paths = ensure(args.images, "mixed", **corpus_args(args.smoke))
    csv = manifest(args.images, "mixed", **corpus_args(args.smoke))
    folder = image_folder(paths, ROOT)
    model = clip_dir()
    cr_python = clip_retrieval_python()
    view = clip_retrieval_view(model, cr_python, ROOT, child_env(1))
    argvs = commands(csv, folder, model, view, cr_python)
    runs: dict[str, list[dict]] = {n: [] for n in CONTENDERS}
    same = None
    for r in range(args.rounds):
        order = CONTENDERS[r % len(CONTENDERS) :] + CONTENDERS[: r % len(CONTENDERS)]
        kept = {}
        for position, name in enumerate(order):
            out = ROOT / "out" / name
            result = run_contender(name, argvs[name], out, args.images, args.torch_threads)
            runs[name].append(result | {"round": r, "position": position})
            if r == 0 and name in ("vlpipe-clip", "clip-retrieval"):
                kept[name] = embeddings(name, out)
            shutil.rmtree(out, ignore_errors=True)
        if r == 0:
            same = agreement(kept["vlpipe-clip"], kept["clip-retrieval"])
    shutil.rmtree(folder, ignore_errors=True)
    return {
        "runs": runs,
        "commands": {n: shown(a) for n, a in argvs.items()},
        "agreement": same,
        "vlpipe_env": probe(sys.executable, args.torch_threads, "torch", "transformers"),
        "clip_retrieval_env": probe(
            cr_python, args.torch_threads, "clip-retrieval", "torch", "transformers", "all_clip"
        ),  # fmt: skip
        "corpus": describe(paths),
    }


def median_rate(runs: list[dict]) -> float:
    return statistics.median(r["images_s"] for r in runs)


def run(args) -> dict:
    report = Report(result_name(NAME, args.smoke), TITLE)
    m = measure(args)
    rate = {name: median_rate(rs) for name, rs in m["runs"].items()}
    report.add(
        Figure(
            "embeddings only, CLIP B/32, end to end", rate["vlpipe-clip"],
            rate["clip-retrieval"], "clip-retrieval inference", "images/s", goal=3.0,
            note="same random full-size CLIP ViT-B/32 and images; process start to exit",
        )
    )  # fmt: skip
    report.add(
        Figure(
            "vlpipe-mini embeddings only vs captions + embeddings", rate["mini-embed"],
            rate["mini-both"], "vlpipe-mini captions + embeddings", "images/s", goal=1.25,
            note="--captioner none: no caption model loaded or run",
        )
    )  # fmt: skip
    report.details = {
        "corpus": m["corpus"],
        "images": args.images,
        "rounds": args.rounds,
        "batch_size": BATCH,
        "torch_threads": {
            "requested": args.torch_threads or "torch's default",
            "vlpipe": m["vlpipe_env"]["torch_threads"],
            "clip-retrieval": m["clip_retrieval_env"]["torch_threads"],
        },
        "env": child_env(args.torch_threads),
        "versions": {
            "vlpipe venv": m["vlpipe_env"],
            "clip-retrieval venv": m["clip_retrieval_env"],
        },  # fmt: skip
        "commands": m["commands"],
        "embedding_agreement": m["agreement"],
        "runs": m["runs"],
    }
    return report.finish()


def markdown(result: dict) -> str:
    d = result["details"]
    c = d["corpus"]
    t = d["torch_threads"]
    cr = d["versions"]["clip-retrieval venv"]
    agree = d.get("embedding_agreement") or {}
    lines = [
        f"Corpus: {c['images']} JPEGs, long side {c['long_side_px'][0]}-{c['long_side_px'][1]}"
        f" px, mean {c['mean_megapixels']} MP; the same images for every contender. Batch"
        f" {d['batch_size']}, CPU only, torch intra-op threads {t['vlpipe']} (vlpipe) and"
        f" {t['clip-retrieval']} (clip-retrieval), from"
        f" `{' '.join(f'{k}={v}' for k, v in d['env'].items())}`. {d['rounds']} round(s) in"
        " rotating order, each contender a fresh process; images/s = images / seconds from"
        " process start to exit (imports, model load, clip-retrieval's warm-up, reading,"
        " inference, writing).",
        "",
        "| contender | images | images/s, each round | median images/s | inner s, each round"
        " | peak RSS MB |",
        "|---|---|---|---|---|---|",
    ]
    for name, runs in d["runs"].items():
        if not runs:
            continue
        rates = "; ".join(f"{r['images_s']:.2f}" for r in runs)
        inner = "; ".join(f"{r.get('run_s', r.get('total_duration', '-'))}" for r in runs)
        lines.append(
            f"| {LABELS.get(name, name)} | {runs[-1]['images']} | {rates} |"
            f" {median_rate(runs):.2f} | {inner} | {max(r['peak_rss_mb'] for r in runs)} |"
        )
    lines += [
        "",
        "Inner s: the part of the process each tool times itself. vlpipe: `run()` as its summary"
        " line reports it (model load, pipeline, writing; not interpreter start and imports)."
        " clip-retrieval: its batch loop, the sum of `total_duration` in stats/0.json (reading,"
        " inference, writing; not imports, model load and warm-up). Peak RSS sums every process"
        " of a contender (clip-retrieval's DataLoader workers and logger included).",
        "",
        "Commands (run from the repository root):",
        "",
    ]
    lines += [f"- {LABELS.get(n, n)}: `{cmd}`" for n, cmd in d["commands"].items()]
    lines += [
        "",
        f"clip-retrieval {cr.get('clip-retrieval')} (transformers {cr.get('transformers')},"
        f" torch {cr.get('torch', result['hardware']['torch'])}) runs from its own venv,"
        " bench/.venv-clip-retrieval (its pins do not fit vlpipe's environment). Its"
        " transformers 4.x cannot read the tokenizer files transformers 5 wrote, so it loads a"
        " view of the same model folder (config, weights, image preprocessor linked; OpenAI's BPE"
        " tokenizer in the 4.x format); it embeds no text here.",
    ]
    if agree:
        lines.append(
            f"Same model on both sides: cosine of vlpipe's and clip-retrieval's embeddings of"
            f" the same image, mean {agree['same_image_mean']}, min {agree['same_image_min']}"
            f" over {agree['images']} images (of different images: {agree['other_image_mean']})."
        )
    return "\n".join(lines)


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.modes", description=TITLE)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--torch-threads", type=int, default=1,
        help="intra-op threads of every contender (0: torch's default, one per core)",
    )  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="64 images, 1 round")
    parser.add_argument("--smoke", action="store_true", help="4 sample images, 1 round")
    args = parser.parse_args(argv)
    if args.quick:
        args.images, args.rounds = 64, 1
    if args.smoke:
        args.images, args.rounds = 4, 1
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from bench.report import run_and_publish

    return run_and_publish(NAME, lambda: run(args), args.smoke)


if __name__ == "__main__":
    sys.exit(main())
