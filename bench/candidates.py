"""What `--candidates N` costs: one captioner with N = 1 (greedy, the baseline) and N = 4 (a
width-4 beam search, each of the 4 captions embedded by the run's text tower and the closest to
the image kept), side by side on the same images.

Both go through vlpipe's own model handler (the inference step `vlpipe run` runs: caption, image
embedding, and for N = 4 the re-ranking), on the same loaded models and the same preprocessed
images, batch by batch, interleaved (the order swapped every batch), so a busy moment of this
shared machine falls on both. Default models: BLIP-base + CLIP ViT-B/32 at full size with random
weights (bench/family_builders.py; no hub): random weights never stop early, so every caption,
and every beam, runs to --max-tokens (an upper bound on a real caption of that length).
`--captioner` / `--embedder` take any names `vlpipe run` takes (a hub model where the hub is
reachable, a directory).

    python -m bench.candidates                      # the default pair, full size (minutes)
    python -m bench.candidates --captioner DIR --embedder DIR
    python -m bench.candidates --smoke              # tiny models, seconds; bench/results/tmp only
    python -m bench.candidates --placeholder        # the not-measured block of BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from bench.common import REPO, Figure, Report, fmt, load, save

NAME = "candidates"
TITLE = "Caption candidates: --candidates 4 against greedy captions"
RUN_COMMAND = "python -m bench.candidates"
WIDE = 4  # the candidates timed against greedy


def build_default(folder: Path, tiny: bool) -> tuple[str, str]:
    """The BLIP-base + CLIP ViT-B/32 pair (random weights), or its tiny form."""
    import torch

    from bench.family_builders import build_blip_clip

    return build_blip_clip(folder, tiny, torch.float32)


def image_paths(count: int, smoke: bool) -> list[Path]:
    """The mixed-size benchmark corpus (the repository's example photos for the smoke run)."""
    if smoke:
        paths = sorted((REPO / "examples" / "images").glob("*.jpg"))
        return [paths[i % len(paths)] for i in range(count)]
    from bench.families import image_files

    return image_files(None, count)


def handlers(captioner: str, embedder: str, args) -> dict:
    """One model handler per N (the same loaded models serve both)."""
    from vlpipe.models.prompting import Prompting
    from vlpipe.worker.handlers import VlpipeModelHandler

    return {
        n: VlpipeModelHandler(
            captioner,
            embedder,
            device=args.device,
            precision="fp32",
            max_caption_tokens=args.max_tokens,
            max_batch_size=args.batch_size,
            prompting=Prompting(candidates=n),
        )  # fmt: skip
        for n in (1, WIDE)
    }


def time_both(by_n: dict, models, batches: list[list]) -> dict:
    """Seconds of each N over the same batches (interleaved, the order swapped every batch),
    and what N = 4 changed: captions other than greedy's, the mean score of the kept one."""
    seconds = {n: 0.0 for n in by_n}
    captions: dict[int, list[str]] = {n: [] for n in by_n}
    scores: list[float] = []
    for i, batch in enumerate(batches):
        for n in sorted(by_n, reverse=bool(i % 2)):
            start = time.perf_counter()
            results = list(by_n[n].run_inference(batch, models))
            seconds[n] += time.perf_counter() - start
            captions[n] += [r.caption for r in results]
            if n > 1:
                scores += [r.columns["caption_score"] for r in results]
    changed = sum(a != b for a, b in zip(captions[1], captions[WIDE], strict=True))
    return {
        "seconds": seconds,
        "images": sum(len(b) for b in batches),
        "changed": changed,
        "mean_score": sum(scores) / len(scores),
        "samples": {n: captions[n][:2] for n in by_n},
    }


def measure(args) -> dict:
    from vlpipe.worker.handlers import prepare_image

    report = Report(f"tmp/{NAME}-smoke" if args.smoke else NAME, TITLE)
    with tempfile.TemporaryDirectory(prefix="vlpipe-candidates-") as tmp:
        if args.captioner:
            captioner, embedder = args.captioner, args.embedder
        else:
            captioner, embedder = build_default(Path(tmp), tiny=args.smoke)
        by_n = handlers(captioner, embedder, args)
        models = by_n[1].load_model()
        paths = image_paths(args.batch_size * (args.batches + 1), args.smoke)
        items = [prepare_image(str(i), p.read_bytes(), models) for i, p in enumerate(paths)]
        batches = [items[i : i + args.batch_size] for i in range(0, len(items), args.batch_size)]
        time_both(by_n, models, batches[:1])  # warm-up, untimed
        r = time_both(by_n, models, batches[1:])
    rate = {n: r["images"] / s for n, s in r["seconds"].items()}
    report.add(
        Figure(f"images/s with --candidates {WIDE}", rate[WIDE], rate[1],
               "--candidates 1 (greedy)", "images/s",
               note=f"{r['changed']}/{r['images']} captions differ from greedy's")
    )  # fmt: skip
    report.details = {
        "models": "tiny random (code-path check)" if args.smoke else "as named",
        "captioner": args.captioner or "BLIP-base, random weights",
        "embedder": args.embedder or "CLIP ViT-B/32, random weights",
        "device": args.device,
        "batch_size": args.batch_size,
        "batches": args.batches,
        "max_tokens": args.max_tokens,
        "images": r["images"],
        "seconds": {str(n): round(s, 3) for n, s in r["seconds"].items()},
        "images_s": {str(n): round(v, 3) for n, v in rate.items()},
        "changed": r["changed"],
        "mean_caption_score": round(r["mean_score"], 4),
        "samples": {str(n): v for n, v in r["samples"].items()},
    }
    print(f"images/s: --candidates 1 {fmt(rate[1])}, --candidates {WIDE} {fmt(rate[WIDE])};"
          f" ratio {rate[WIDE] / rate[1]:.2f}x")  # fmt: skip
    return report.finish()


def not_measured() -> dict:
    """The placeholder record (an earlier real measurement is kept instead)."""
    previous = load(NAME)
    if previous and "images_s" in previous.get("details", {}):
        return previous
    result = {"name": NAME, "title": TITLE, "command": RUN_COMMAND, "figures": [], "details": {}}
    save(NAME, result)
    return result


def markdown(result: dict) -> str:
    d = result.get("details") or {}
    if "images_s" not in d:
        return f"Not measured yet. On a quiet machine, run\n\n    {RUN_COMMAND}\n"
    return "\n".join([
        f"Captioner {d['captioner']}, embedder {d['embedder']}, on {d['device']}; {d['images']}"
        f" images in {d['batches']} batches of {d['batch_size']}, captions of up to"
        f" {d['max_tokens']} tokens, the two settings interleaved batch by batch on the same"
        " loaded models. `--candidates 4` is a width-4 beam search returning its 4 best beams,"
        " each embedded by the text tower and the closest to the image kept (LAION-COCO's"
        " recipe); the time is vlpipe's whole inference step (captions, image embeddings,"
        " re-ranking).",
        "",
        "| setting | seconds | images/s |",
        "|---|---|---|",
        *(f"| --candidates {n} | {fmt(d['seconds'][n])} | {fmt(d['images_s'][n])} |"
          for n in d["images_s"]),
        "",
        f"{d['changed']} of {d['images']} captions differ from the greedy ones; mean"
        f" caption_score of the kept candidate {d['mean_caption_score']}.",
    ])  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.candidates", description=TITLE)
    parser.add_argument("--captioner", help="any --captioner name [default: BLIP-base, built]")
    parser.add_argument("--embedder", help="any --embedder name (with --captioner)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--batches", type=int, default=4, help="timed batches, after a warm-up")
    parser.add_argument("--max-tokens", type=int, default=20)
    parser.add_argument("--smoke", action="store_true", help="tiny models, seconds")
    parser.add_argument("--placeholder", action="store_true",
                        help="write the not-measured block only")  # fmt: skip
    args = parser.parse_args(argv)
    if bool(args.captioner) != bool(args.embedder):
        parser.error("--captioner and --embedder go together")
    if args.smoke:
        args.batch_size, args.batches, args.max_tokens = 2, 1, 4
    result = not_measured() if args.placeholder else measure(args)
    if not args.smoke:
        from bench.report import update

        update(NAME, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
