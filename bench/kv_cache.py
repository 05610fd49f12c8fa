"""Before/after of the fix for the slowest CPU stage: vlpipe-mini's caption decoding.

The profile (bench/profile.py) put most of `vlpipe run`'s CPU time in caption decoding, which ran
the whole nn.TransformerDecoder over the whole prefix at every step. `CaptionDecoder.generate` now
decodes with a KV cache, cross-attention once per image and finished images leaving the batch
(vlpipe/models/mini/decoding.py); the baseline here is the same beam search with the old
full-prefix step (`FullPrefixStep`), on the same weights and memories, checked to give the same
token ids. On a CPU with native bf16 it also times the decoder with its weights in bf16 (what
`--precision auto` picks there) against fp32, and counts the captions that stay identical.

    python -m bench.kv_cache [--images 64] [--model mini] [--quick]
    python -m bench.kv_cache --smoke   # 4 images, 6 tokens, nothing published
"""

from __future__ import annotations

import argparse
import sys
import time
from functools import partial

import torch

from bench.common import Figure, Report, result_name
from bench.corpus import corpus_args, describe, ensure
from vlpipe.models.mini.decoding import FullPrefixStep, beam_search

NAME = "kv_cache"
TITLE = "Caption decoding with a KV cache (before/after in vlpipe-mini)"


def full_prefix_generate(decoder, memory, beams=1, max_tokens=30, length_penalty=0.7):
    """The decoding vlpipe-mini used before the KV cache (the baseline)."""
    return beam_search(decoder, memory, beams, max_tokens, length_penalty, FullPrefixStep)


def install_full_prefix() -> None:
    """Make every CaptionDecoder in this process decode the old way (used by
    `python -m bench.contenders --full-prefix-decoder` to measure the "before" end to end)."""
    from vlpipe.models.mini.fusion import CaptionDecoder

    CaptionDecoder.generate = full_prefix_generate


def memories(model, paths, batch: int) -> list[torch.Tensor]:
    """The decoder's memory for batches of corpus images, through vlpipe's own decode path."""
    from vlpipe.images.decode import decode_image

    size = model.image_size
    pixels = [model.preprocess(decode_image(p.read_bytes(), size).image) for p in paths]
    out = []
    with torch.inference_mode():
        for i in range(0, len(pixels), batch):
            out.append(model.memory(model.grid(torch.stack(pixels[i : i + batch]))))
    return out


def time_pair(first: tuple, second: tuple, names: tuple[str, str]) -> dict:
    """Seconds of two decodings, each (decode, its memories), batch by batch interleaved
    (`first` first), keyed NAME_s, and how many of their captions are identical."""
    spent = [0.0, 0.0]
    same = total = 0
    with torch.inference_mode():
        for batch in zip(first[1], second[1], strict=True):
            ids = []
            for i, (decode, mem) in enumerate(zip((first[0], second[0]), batch, strict=True)):
                t0 = time.perf_counter()
                ids.append(decode(mem))
                spent[i] += time.perf_counter() - t0
            same += sum(x == y for x, y in zip(*ids, strict=True))
            total += len(ids[0])
    return {f"{names[0]}_s": spent[0], f"{names[1]}_s": spent[1], "identical": same,
            "captions": total}  # fmt: skip


def run(args) -> dict:
    from vlpipe.models.precision import native_bf16_flags
    from vlpipe.models.registry import load_captioner

    report = Report(result_name(NAME, args.smoke), TITLE)
    model = load_captioner(args.model, device="cpu", precision="fp32")
    paths = ensure(args.images, "mixed", **corpus_args(args.smoke))
    mems = memories(model, paths, args.batch_size)
    mems16 = [m.to(torch.bfloat16) for m in mems]
    rows, bf16_rows = {}, {}
    bf16 = load_captioner(args.model, device="cpu", precision="bf16")
    for beams in sorted({1, model.num_beams}):
        for threads in (1, 2):
            torch.set_num_threads(threads)
            settings = {"beams": beams, "max_tokens": args.max_tokens}
            cached = partial(model.decoder.generate, **settings)
            full = partial(full_prefix_generate, model.decoder, **settings)
            r = time_pair((full, mems), (cached, mems), ("current", "cached"))
            rows[f"beams={beams}, torch threads={threads}"] = r
            rate_now, rate_new = r["captions"] / r["current_s"], r["captions"] / r["cached_s"]
            report.add(
                Figure(
                    f"caption decoding, beams {beams}, {threads} thread(s)", rate_new, rate_now,
                    "full-prefix decoding", "captions/s",
                    note=f"{r['identical']}/{r['captions']} identical captions",
                )
            )  # fmt: skip
            if not native_bf16_flags():
                continue  # bf16 is emulated (slow) there, and auto never picks it
            in_bf16 = partial(bf16.decoder.generate, **settings)
            p = time_pair((cached, mems), (in_bf16, mems16), ("fp32", "bf16"))
            bf16_rows[f"beams={beams}, torch threads={threads}"] = p
            report.add(
                Figure(
                    f"caption decoding in bf16, beams {beams}, {threads} thread(s)",
                    p["captions"] / p["bf16_s"], p["captions"] / p["fp32_s"],
                    "the same decoder in fp32", "captions/s",
                    note=f"{p['identical']}/{p['captions']} identical captions",
                )
            )  # fmt: skip
    report.details = {
        "corpus": describe(paths),
        "model": args.model,
        "batch_size": args.batch_size,
        "max_tokens": args.max_tokens,
        "cpu_bf16": list(native_bf16_flags()),
        "runs": {k: {kk: round(vv, 3) for kk, vv in v.items()} for k, v in rows.items()},
        "bf16_runs": {k: {kk: round(vv, 3) for kk, vv in v.items()} for k, v in bf16_rows.items()},
    }
    return report.finish()


def markdown(result: dict) -> str:
    d = result["details"]
    lines = [
        f"Model `{d['model']}`, {d['corpus']['images']} corpus images in batches of"
        f" {d['batch_size']}, up to {d['max_tokens']} tokens. The `vlpipe` column is"
        " `CaptionDecoder.generate` (KV-cached), the baseline the same beam search re-running"
        " the full prefix each step (the decoder before the change); same captions:",
        "",
        "| setting | identical captions | full-prefix s | cached s |",
        "|---|---|---|---|",
    ]
    for k, r in d["runs"].items():
        lines.append(
            f"| {k} | {r['identical']}/{r['captions']} | {r['current_s']:.2f}"
            f" | {r['cached_s']:.2f} |"
        )
    if d.get("bf16_runs"):
        lines += [
            "",
            "The cached decoder with its weights in bf16 (what `--precision auto` picks on this"
            " CPU) against fp32, on the same memories:",
            "",
            "| setting | identical captions | fp32 s | bf16 s |",
            "|---|---|---|---|",
        ]
        for k, r in d["bf16_runs"].items():
            same = f"{r['identical']}/{r['captions']}"
            lines.append(f"| {k} | {same} | {r['fp32_s']:.2f} | {r['bf16_s']:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.kv_cache", description=TITLE)
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--model", default="mini")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=30)
    parser.add_argument("--quick", action="store_true", help="32 images")
    parser.add_argument("--smoke", action="store_true", help="4 sample images, 6 tokens")
    args = parser.parse_args(argv)
    if args.quick:
        args.images = 32
    if args.smoke:
        args.images, args.batch_size, args.max_tokens = 4, 2, 6
    from bench.report import run_and_publish

    return run_and_publish(NAME, lambda: run(args), args.smoke)


if __name__ == "__main__":
    sys.exit(main())
