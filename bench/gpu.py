"""GPU benchmark: full-size BLIP-base captioner + CLIP ViT-B/32 embedder, fp16, on one CUDA GPU.

Both models are built from their published configs with random weights (no hub here): the same
layers and the same cost per token as the real checkpoints. A random captioner never emits its end
token, so every caption runs to --max-tokens (default 20; real BLIP-base captions are ~10-12
tokens): the caption figures are an upper bound on the real cost.

It measures, on the benchmark corpus (or any folder of JPEGs given with --images-dir):
1. model only: batch-size sweep of caption + embed on pre-decoded pixels already on the GPU,
   images/s and peak GPU memory;
2. decode only: vlpipe's CPU decode + preprocess for both models on every core (threads), and
   torchvision's nvJPEG GPU decode + resize, images/s;
3. end to end: `vlpipe run` (DirectRunner, one process) at the best batch size, images/s and the
   split of its time across decode / inference / writing;
4. every model family (bench/families.py: SmolVLM-256M, Florence-2-base, Qwen2-VL-2B, BLIP-2
   OPT-2.7b, open_clip ViT-L-14, SigLIP 2 base) at full size with random weights through vlpipe's
   handler, fp16 (Qwen2-VL bf16), SDPA attention: images/s and peak GPU memory, each in its own
   processes with a time cap (--families to pick, --family-timeout).
The bottleneck is whichever of decode and model sustains fewer images/s. Goal: 1,000,000
images/hour (~280 images/s) on one H100.

    python -m bench.gpu [--images 2000] [--batch-sizes 16,32,64,128,256] [--quick]
    python -m bench.gpu --smoke   # every step with tiny models on CPU (also --device cpu --tiny)

Without a CUDA device (and without --device cpu) it prints "no CUDA device: not measured" and
exits 0.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.common import REPO, Figure, Report, load, save

NAME = "gpu"
TITLE = "GPU: BLIP-base + CLIP ViT-B/32, fp16, one GPU"
GOAL_IMAGES_S = 1_000_000 / 3600
NOT_MEASURED = "no CUDA device: not measured"
RUN_COMMAND = "python -m bench.gpu"


def build_models(folder: Path, tiny: bool) -> tuple[str, str]:
    from bench import hf_tiny

    if tiny:
        return (
            hf_tiny.build_tiny_blip(folder / "blip"),
            hf_tiny.build_tiny_clip(folder / "clip"),
        )
    return (
        hf_tiny.build_full_size_blip_base(folder / "blip"),
        hf_tiny.build_full_size_clip_b32(folder / "clip"),
    )


def load_models(cap_dir: str, emb_dir: str, device: str, precision: str):
    from vlpipe.worker.handlers import VlpipeModelHandler

    handler = VlpipeModelHandler(cap_dir, emb_dir, device=device, precision=precision)
    return handler, handler.load_model()


def prepared(paths: list[Path], models, n: int) -> tuple:
    """uint8 pixel batches for both models from the first n images (decoded once, on CPU)."""
    import torch

    from vlpipe.worker.handlers import prepare_image

    items = [prepare_image(str(i), p.read_bytes(), models) for i, p in enumerate(paths[:n])]
    return (
        torch.stack([p.caption_pixels for p in items]),
        torch.stack([p.embed_pixels for p in items]),
    )


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def model_sweep(
    models, cap_px, emb_px, batch_sizes: list[int], max_tokens: int, device: str
) -> list[dict]:
    """Caption + embed throughput per batch size on pixels already on the device."""
    import torch

    rows = []
    for bs in batch_sizes:
        reps = max(1, min(4, 2 * len(cap_px) // bs))
        cap = cap_px[:bs].repeat((bs + len(cap_px) - 1) // len(cap_px), 1, 1, 1)[:bs].to(device)
        emb = emb_px[:bs].repeat((bs + len(emb_px) - 1) // len(emb_px), 1, 1, 1)[:bs].to(device)
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        try:
            models.captioner.caption(cap[:2], max_tokens)  # warm-up
            _sync(device)
            t0 = time.perf_counter()
            for _ in range(reps):
                models.captioner.caption(cap, max_tokens)
            _sync(device)
            t1 = time.perf_counter()
            for _ in range(reps):
                models.embedder.embed_images(emb)
            _sync(device)
            t2 = time.perf_counter()
        except torch.OutOfMemoryError:
            rows.append({"batch": bs, "error": "out of GPU memory"})
            break
        mem = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None
        caption_s, embed_s = (t1 - t0) / reps, (t2 - t1) / reps
        rows.append(
            {
                "batch": bs,
                "images_s": round(bs / (caption_s + embed_s), 1),
                "caption_images_s": round(bs / caption_s, 1),
                "embed_images_s": round(bs / embed_s, 1),
                "peak_gpu_memory_gb": None if mem is None else round(mem, 2),
            }
        )
    return rows


def cpu_decode_rate(paths: list[Path], models, threads: int) -> float:
    """vlpipe's decode + both preprocesses on `threads` threads (Pillow releases the GIL)."""
    from vlpipe.worker.handlers import prepare_image

    data = [p.read_bytes() for p in paths]
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda d: prepare_image("w", d, models), data[: threads * 2]))  # warm-up
        t0 = time.perf_counter()
        list(pool.map(lambda d: prepare_image("x", d, models), data))
    return len(data) / (time.perf_counter() - t0)


def nvjpeg_decode_rate(paths: list[Path], size: int, batch: int, device: str) -> float | None:
    """torchvision's batched GPU JPEG decode (nvJPEG) plus an antialiased resize on the GPU."""
    if not device.startswith("cuda"):
        return None
    import torch
    from torchvision.io import decode_jpeg
    from torchvision.transforms.v2.functional import resize

    data = [torch.frombuffer(bytearray(p.read_bytes()), dtype=torch.uint8) for p in paths]
    decode_jpeg(data[:batch], device=device)  # warm-up
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for i in range(0, len(data), batch):
        images = decode_jpeg(data[i : i + batch], device=device)
        _ = [resize(im, [size, size], antialias=True) for im in images]
    torch.cuda.synchronize()
    return len(data) / (time.perf_counter() - t0)


def pipeline_run(manifest: Path, cap_dir: str, emb_dir: str, args, batch: int, out: Path) -> dict:
    import vlpipe

    start = time.perf_counter()
    summary = vlpipe.run(
        str(manifest),
        str(out),
        captioner=cap_dir,
        embedder=emb_dir,
        device=args.device,
        precision=args.precision,
        batch_size=batch,
        max_caption_tokens=args.max_tokens,
        decode_threads=args.decode_threads,
        overwrite=True,
        build_index=False,
    ).last
    seconds = time.perf_counter() - start
    return {
        "images": summary.processed,
        "written": summary.written,
        "seconds": round(seconds, 2),
        "images_s": round(summary.processed / seconds, 1),
        "split": {k: round(v, 2) for k, v in summary.timings.items()},
    }


def corpus_paths(args) -> list[Path]:
    if args.images_dir:
        paths = sorted(Path(args.images_dir).glob("*.jpg"))[: args.images]
        if not paths:
            raise SystemExit(f"error: no .jpg files in {args.images_dir}")
        return paths
    from bench.corpus import ensure

    return ensure(args.images, "mixed")


def write_manifest(paths: list[Path], folder: Path) -> Path:
    path = folder / "manifest.csv"
    path.write_text("uri\n" + "".join(f"{p.resolve()}\n" for p in paths))
    return path


def measure(args) -> dict:
    import torch

    # a CPU code-path check must never overwrite a real GPU measurement
    report = Report("tmp/gpu-tiny" if args.tiny else NAME, TITLE)
    paths = corpus_paths(args)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    with tempfile.TemporaryDirectory(prefix="vlpipe-gpu-bench-") as tmp:
        folder = Path(tmp)
        cap_dir, emb_dir = build_models(folder, args.tiny)
        handler, models = load_models(cap_dir, emb_dir, args.device, args.precision)
        cap_px, emb_px = prepared(paths, models, min(len(paths), max(batch_sizes)))
        sweep = model_sweep(models, cap_px, emb_px, batch_sizes, args.max_tokens, args.device)
        ok = [r for r in sweep if "images_s" in r]
        best = max(ok, key=lambda r: r["images_s"])
        cores = len(os.sched_getaffinity(0))
        cpu_rate = cpu_decode_rate(paths, models, threads=cores)
        gpu_rate = nvjpeg_decode_rate(paths, models.image_size, 64, args.device)
        e2e = pipeline_run(
            write_manifest(paths, folder), cap_dir, emb_dir, args, best["batch"], folder / "out"
        )
        families = families_step(args, folder)
    decode_best = max(r for r in (cpu_rate, gpu_rate) if r)
    bottleneck = "decode (CPU)" if cpu_rate < best["images_s"] else "model (GPU)"
    report.add(
        Figure(
            "vlpipe run, captions + embeddings", e2e["images_s"], GOAL_IMAGES_S,
            "1M images/hour target", "images/s", goal=1.0,
        )
    )  # fmt: skip
    report.add(
        Figure(
            "vlpipe run vs model alone at its best batch", e2e["images_s"], best["images_s"],
            f"model only, batch {best['batch']}", "images/s", goal=0.9,
        )
    )  # fmt: skip
    report.details = {
        "models": "tiny random BLIP + CLIP (code-path check)"
        if args.tiny
        else "BLIP-base (ViT-B/16 384 px + BERT decoder) + CLIP ViT-B/32, random weights",
        "device": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else args.device,
        "precision": args.precision,
        "max_tokens": args.max_tokens,
        "images": len(paths),
        "sweep": sweep,
        "decode_images_s": {
            f"vlpipe CPU decode, {cores} threads": round(cpu_rate, 1),
            "torchvision nvJPEG (GPU) + resize": None if gpu_rate is None else round(gpu_rate, 1),
        },
        "decode_best_images_s": round(decode_best, 1),
        "end_to_end": e2e,
        "bottleneck": bottleneck,
        "families": families,
    }
    return report.finish()


def families_step(args, folder: Path) -> list[dict]:
    """Every model family (bench/families.py) at full size on the device, fp16 (bf16 for
    Qwen2-VL), transformers' default SDPA attention, each in its own processes with a cap."""
    from argparse import Namespace

    from bench.families import FAMILIES, run_family

    chosen = {"all": ",".join(FAMILIES), "none": ""}.get(args.families, args.families)
    names = [n for n in chosen.split(",") if n]
    cpu = not args.device.startswith("cuda")
    options = Namespace(
        device=args.device, precision="fp32" if cpu else None, tiny=args.tiny,
        batch=2 if args.tiny else None, batches=1 if args.tiny else 2,
        max_tokens=args.max_tokens, timeout=args.family_timeout, images_dir=args.images_dir,
    )  # fmt: skip
    rows = []
    for name in names:
        rows.append(run_family(FAMILIES[name], options, folder / "families" / name))
        print(f"   {rows[-1]}", flush=True)
    return rows


def not_measured() -> dict:
    """The record written where no GPU is lent; an earlier real measurement is kept instead."""
    previous = load(NAME)
    if previous and previous.get("figures"):
        return previous
    result = {
        "name": NAME,
        "title": TITLE,
        "status": NOT_MEASURED,
        "command": RUN_COMMAND,
        "figures": [],
        "details": {},
    }
    save(NAME, result)
    return result


def markdown(result: dict) -> str:
    if not result.get("figures"):
        return (
            "Not measured (no GPU lent to this task). On a machine with one CUDA GPU, run\n\n"
            f"    {RUN_COMMAND}\n\n"
            "(builds full-size BLIP-base + CLIP ViT-B/32 with random weights, sweeps batch sizes"
            " 16-256 in fp16, decodes on CPU and with nvJPEG, runs `vlpipe run` end to end, then"
            " times every model family at full size; `--quick` for 500 images and two batch"
            " sizes, planned to fit 10 minutes) and `python -m bench.report` to fill these tables."
        )
    d = result["details"]
    lines = [
        f"{d['models']} on {d['device']}, {d['precision']}, {d['max_tokens']} tokens per caption"
        f" (random weights never stop early), {d['images']} images.",
        "",
        "| batch | caption+embed images/s | caption images/s | embed images/s | peak GPU GB |",
        "|---|---|---|---|---|",
    ]
    for r in d["sweep"]:
        if "error" in r:
            lines.append(f"| {r['batch']} | {r['error']} | | | |")
        else:
            lines.append(
                f"| {r['batch']} | {r['images_s']} | {r['caption_images_s']} |"
                f" {r['embed_images_s']} | {r['peak_gpu_memory_gb']} |"
            )
    lines += ["", "| decoder | images/s |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in d["decode_images_s"].items()]
    e = d["end_to_end"]
    lines += [
        "",
        f"`vlpipe run`: {e['images_s']} images/s over {e['images']} images; time in shards"
        f" {e['split']}. Bottleneck: {d['bottleneck']}.",
    ]
    if d.get("families"):
        from bench.families import table

        lines += ["", "Every model family, full size, random weights, on the same GPU:", ""]
        lines += table(d["families"], cuda=True)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu", description=TITLE)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--images-dir", help="a folder of JPEGs instead of the Flickr8k corpus")
    parser.add_argument("--batch-sizes", default="16,32,64,128,256")
    parser.add_argument("--max-tokens", type=int, default=20)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--precision", default="fp16")
    parser.add_argument("--decode-threads", type=int, default=max(4, os.cpu_count() or 1))
    parser.add_argument("--tiny", action="store_true", help="tiny random models (code check)")
    parser.add_argument("--quick", action="store_true", help="500 images, batch 32,128")
    parser.add_argument("--families", default="all", help="comma-separated, all, or none")
    parser.add_argument("--family-timeout", type=float, default=150, help="seconds per family")
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny models, every step")
    args = parser.parse_args(argv)
    from bench.families import FAMILIES

    unknown = [n for n in args.families.split(",") if n not in (*FAMILIES, "all", "none", "")]
    if unknown:
        parser.error(f"unknown family {unknown[0]!r}: choose from {', '.join(FAMILIES)}")
    if args.quick:
        args.images, args.batch_sizes = min(args.images, 500), "32,128"
    if args.smoke:
        args.device, args.precision, args.tiny = "cpu", "fp32", True
        args.images, args.batch_sizes, args.max_tokens = min(args.images, 8), "2,4", 4
        args.family_timeout = max(args.family_timeout, 300)
        args.images_dir = args.images_dir or str(REPO / "examples" / "images")
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(NOT_MEASURED)
        result = not_measured()
    else:
        result = measure(args)
    if not args.tiny:
        from bench.report import update

        update(NAME, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
