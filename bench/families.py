"""Every model family vlpipe runs, timed the same way, each in its own process with a time cap.

Shared by bench/models_cpu.py (this CPU, images/s and peak RSS) and bench/gpu.py (one GPU). For
each family a first child builds the model (full size with random weights, or tiny) into a
temporary folder, and a second child loads it through vlpipe's own model handler (the one `vlpipe
run` uses), decodes and preprocesses the images untimed, then times `run_inference` on whole
batches: captions and/or image embeddings, exactly the pipeline's inference step. The parent
samples the measuring child's peak RSS (model load included).

    python -m bench.families --child build FAMILY --dir D [--tiny]
    python -m bench.families --child measure FAMILY --dir D --device cpu --precision fp32 ...
    python -m bench.families --child both FAMILY --dir D --tiny ...   # the smoke mode
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench.common import REPO, fmt, run_child

PAIR = "blip-base+clip-b32"


@dataclass(frozen=True)
class Family:
    name: str
    title: str
    builder: str  # function name in bench.family_builders
    role: str  # "pair" (captioner + embedder), "captioner" or "embedder"
    cpu_precision: str  # chosen so the model fits 24 GiB beside the other jobs; printed
    cpu_batch: int
    gpu_batch: int
    gpu_precision: str = "fp16"


FAMILIES = {
    f.name: f
    for f in [
        Family(PAIR, "BLIP-base captioner + CLIP ViT-B/32", "build_blip_clip", "pair",
               "fp32", 8, 256),
        Family("smolvlm-256m", "SmolVLM-256M (Idefics3)", "build_smolvlm", "captioner",
               "fp32", 2, 64),
        Family("florence-2-base", "Florence-2-base", "build_florence2", "captioner",
               "fp32", 4, 64),
        Family("qwen2-vl-2b", "Qwen2-VL-2B, 448x448 px bound", "build_qwen2_vl", "captioner",
               "bf16", 2, 64, "bf16"),
        Family("blip2-opt-2.7b", "BLIP-2 OPT-2.7b", "build_blip2", "captioner",
               "bf16", 2, 64),
        Family("open_clip-vit-l-14", "open_clip ViT-L-14", "build_open_clip", "embedder",
               "fp32", 8, 256),
        Family("siglip2-base-naflex", "SigLIP 2 base NaFlex", "build_siglip2", "embedder",
               "fp32", 8, 256),
    ]
}  # fmt: skip


def precision_dtype(precision: str):
    import torch

    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]


def build(family: Family, folder: Path, tiny: bool, precision: str) -> dict:
    """Build one family's model(s) into `folder`: the names vlpipe takes, and the size."""
    from bench import family_builders

    built = getattr(family_builders, family.builder)(folder, tiny, precision_dtype(precision))
    if family.role == "pair":
        captioner, embedder = built
    elif family.role == "captioner":
        captioner, embedder = built, "none"
    else:
        captioner, embedder = "none", built
    params = sum(
        family_builders.describe(n)["params_m"] for n in (captioner, embedder) if n != "none"
    )
    return {"captioner": captioner, "embedder": embedder, "params_m": round(params, 1)}


def image_files(images_dir: str | None, count: int) -> list[Path]:
    """The benchmark corpus (mixed photo sizes) where ../shared has Flickr8k, else the
    repository's example photos; `count` files, repeated if there are fewer."""
    if images_dir:
        paths = sorted(Path(images_dir).glob("*.jpg"))
    else:
        try:
            from bench.corpus import ensure

            paths = ensure(count, "mixed")
        except Exception:  # noqa: BLE001 - no Flickr8k copy here: the shipped examples
            paths = sorted((REPO / "examples" / "images").glob("*.jpg"))
    return [paths[i % len(paths)] for i in range(count)]


def measure(names: dict, args) -> dict:
    """Load through vlpipe's handler, preprocess untimed, time `run_inference` per batch."""
    import torch

    from vlpipe.worker.handlers import VlpipeModelHandler, prepare_image

    torch.manual_seed(0)
    cuda = args.device.startswith("cuda")
    start = time.perf_counter()
    handler = VlpipeModelHandler(
        names["captioner"], names["embedder"], device=args.device, precision=args.precision,
        max_caption_tokens=args.max_tokens, max_batch_size=args.batch,
    )  # fmt: skip
    models = handler.load_model()
    load_s = time.perf_counter() - start
    paths = image_files(args.images_dir, args.batch * args.batches)
    items = [prepare_image(str(i), p.read_bytes(), models) for i, p in enumerate(paths)]
    handler.run_inference(items[: min(2, args.batch)], models)  # warm-up
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for i in range(0, len(items), args.batch):
        results = handler.run_inference(items[i : i + args.batch], models)
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    model = next(m for m in (models.captioner, models.embedder) if m is not None)
    last = results[-1]
    return {
        "images": len(items),
        "batch": args.batch,
        "seconds": round(seconds, 2),
        "images_s": round(len(items) / seconds, 3),
        "load_s": round(load_s, 1),
        "dtype": str(getattr(model, "dtype", "")).removeprefix("torch."),
        "attention": attention(model),
        "peak_gpu_memory_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
        "sample_caption": last.caption,
        "embedding_dim": None if last.embedding is None else int(len(last.embedding)),
    }


def attention(model) -> str | None:
    """The attention implementation transformers picked (sdpa, eager, ...) for the model or
    its loaded vision tower; open_clip's own modules for open_clip."""
    if model.describe().get("family") == "open_clip":
        return "open_clip (torch)"
    inner = getattr(model, "model", None) or getattr(model, "_loaded", {}).get("vision")
    return getattr(getattr(inner, "config", None), "_attn_implementation", None)


def run_family(family: Family, args, folder: Path) -> dict:
    """Build then measure in two children under one time cap (tiny models: one child does
    both, so the smoke mode starts half the processes); a failure is one line."""
    base = [sys.executable, "-m", "bench.families", family.name, "--dir", str(folder)]
    cuda = args.device.startswith("cuda")
    default = family.gpu_precision if cuda else family.cpu_precision
    flags = ["--precision", args.precision or default]
    deadline = time.perf_counter() + args.timeout
    row = {"family": family.name, "title": family.title, "precision": flags[1]}
    measuring = [
        "--device", args.device, "--batch", str(args.batch or (family.gpu_batch if cuda else
        family.cpu_batch)), "--batches", str(args.batches), "--max-tokens", str(args.max_tokens),
        *(["--images-dir", args.images_dir] if args.images_dir else []),
    ]  # fmt: skip
    try:
        if args.tiny:
            measured = run_child([*base, "--child", "both", "--tiny", *flags, *measuring],
                                 timeout=args.timeout)  # fmt: skip
            return {**row, **measured.output, "peak_rss_gb": _gb(measured.peak_rss_bytes)}
        built = run_child([*base, "--child", "build", *flags], timeout=args.timeout)
        row.update(params_m=built.output["params_m"], build_s=round(built.wall_s, 1))
        names = json.dumps({k: built.output[k] for k in ("captioner", "embedder")})
        measured = run_child(
            [*base, "--child", "measure", *flags, "--names", names, *measuring],
            timeout=max(1.0, deadline - time.perf_counter()),
        )
    except subprocess.TimeoutExpired:
        return {**row, "error": f"over the {args.timeout:.0f} s cap"}
    except RuntimeError as exc:
        lines = [line for line in str(exc).splitlines() if line.strip()]
        return {**row, "error": (lines[-1] if lines else "failed")[:300]}
    return {**row, **measured.output, "peak_rss_gb": _gb(measured.peak_rss_bytes)}


def _gb(nbytes: int) -> float:
    return round(nbytes / 2**30, 2)


def table(rows: list[dict], cuda: bool = False) -> list[str]:
    """Markdown rows of measured families (a failed one says why, in one line)."""
    memory = "peak GPU GB" if cuda else "peak RSS GB"
    lines = [
        f"| family | role | params (M) | precision | batch | images/s | {memory} | load s |"
        " attention |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        role = FAMILIES[r["family"]].role if r["family"] in FAMILIES else ""
        if "error" in r:
            lines.append(f"| {r['title']} | {role} | {r.get('params_m', '-')} | {r['precision']}"
                         f" | | not measured: {r['error']} | | | |")  # fmt: skip
            continue
        peak = r["peak_gpu_memory_gb"] if cuda else r["peak_rss_gb"]
        lines.append(
            f"| {r['title']} | {role} | {fmt(r['params_m'])} | {r['dtype']} | {r['batch']} |"
            f" {fmt(r['images_s'])} | {peak} | {r['load_s']} | {r['attention'] or '-'} |"
        )
    return lines


def child_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.families")
    parser.add_argument("family", choices=list(FAMILIES))
    parser.add_argument("--child", choices=["build", "measure", "both"], required=True)
    parser.add_argument("--dir", required=True)
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--names", help="JSON {captioner, embedder} from the build child")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--batches", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=20)
    parser.add_argument("--images-dir")
    args = parser.parse_args(argv)
    family = FAMILIES[args.family]
    if args.child == "measure":
        out = measure(json.loads(args.names), args)
    else:
        out = build(family, Path(args.dir), args.tiny, args.precision)
        if args.child == "both":
            out = {"params_m": out["params_m"], **measure(out, args)}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(child_main(sys.argv[1:]))
