"""A measured fix for the slowest CPU stage: vlpipe-mini's caption decoding, with a KV cache.

The profile (bench/profile.py) puts most of `vlpipe run`'s CPU time in
`CaptionDecoder.generate` (vlpipe/models/mini/fusion.py). Each of its steps runs the whole
nn.TransformerDecoder over the whole prefix again: the self-attention of every earlier token, the
cross-attention keys and values of all 50 memory cells in every layer, and the vocabulary
projection of every position, of which only the last is used. `cached_generate` below is the same
beam search (greedy when beams == 1) on the same weights, computing each step for the new token
only: per-layer self-attention keys/values are cached (and reordered with the beams), the
cross-attention keys/values are computed once per image, and only the last position is projected
to the vocabulary. It returns the same token ids (checked on every run here).

fusion.py belongs to the vlpipe-mini work, so this is a proposal with its measurement: moving
`cached_generate` into `CaptionDecoder.generate` is the change.

    python -m bench.kv_cache [--images 64] [--model mini] [--quick]
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import torch
import torch.nn.functional as F

from bench.common import Figure, Report
from bench.corpus import CorpusError, describe, ensure

NAME = "kv_cache"
TITLE = "Caption decoding with a KV cache (proposed change to vlpipe-mini)"


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    n, t, d = x.shape
    return x.view(n, t, heads, d // heads).transpose(1, 2)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    n, h, t, hd = x.shape
    return x.transpose(1, 2).reshape(n, t, h * hd)


def _cross_kv(decoder, memory: torch.Tensor, heads: int) -> list[tuple[torch.Tensor, ...]]:
    """Each layer's cross-attention keys and values: once per image, not once per step."""
    d = memory.shape[-1]
    out = []
    for layer in decoder.decoder.layers:
        attn = layer.multihead_attn
        kv = F.linear(memory, attn.in_proj_weight[d:], attn.in_proj_bias[d:])
        out.append((_split_heads(kv[..., :d], heads), _split_heads(kv[..., d:], heads)))
    return out


def _step(decoder, x: torch.Tensor, cache: list, cross: list, heads: int) -> torch.Tensor:
    """One new token (N, 1, d) through every pre-norm layer; appends to the self-attn cache."""
    d = x.shape[-1]
    for i, layer in enumerate(decoder.decoder.layers):
        sa = layer.self_attn
        qkv = F.linear(layer.norm1(x), sa.in_proj_weight, sa.in_proj_bias)
        q, k, v = (_split_heads(z, heads) for z in qkv.split(d, -1))
        if cache[i] is not None:
            k, v = torch.cat([cache[i][0], k], 2), torch.cat([cache[i][1], v], 2)
        cache[i] = (k, v)
        x = x + sa.out_proj(_merge_heads(F.scaled_dot_product_attention(q, k, v)))
        ca = layer.multihead_attn
        q = F.linear(layer.norm2(x), ca.in_proj_weight[:d], ca.in_proj_bias[:d])
        attended = F.scaled_dot_product_attention(_split_heads(q, heads), *cross[i])
        x = x + ca.out_proj(_merge_heads(attended))
        x = x + layer._ff_block(layer.norm3(x))
    return x


@torch.no_grad()
def cached_generate(
    decoder, memory: torch.Tensor, beams: int = 1, max_tokens: int = 30, length_penalty=0.7
) -> list[list[int]]:
    """CaptionDecoder.generate's beam search, one token of compute per step."""
    from vlpipe.models.mini.fusion import BOS, EOS, PAD, UNK

    n, k = memory.shape[0], max(1, beams)
    steps = min(max_tokens, decoder.max_len - 1)
    memory = memory.repeat_interleave(k, 0)
    heads = decoder.decoder.layers[0].self_attn.num_heads
    cross = _cross_kv(decoder, memory, heads)
    cache: list = [None] * len(decoder.decoder.layers)
    scale = math.sqrt(decoder.embed.embedding_dim)
    tokens = torch.full((n * k, 1), BOS, dtype=torch.long, device=memory.device)
    scores = torch.full((n, k), float("-inf"), device=memory.device)
    scores[:, 0] = 0.0
    done = torch.zeros(n * k, dtype=torch.bool, device=memory.device)
    lengths = torch.zeros(n * k, device=memory.device)
    for t in range(steps):
        x = decoder.embed(tokens[:, -1:]) * scale + decoder.pos[t]
        x = _step(decoder, x, cache, cross, heads)[:, -1]
        logp = (decoder.norm(x) @ decoder.embed.weight.T + decoder.out_bias).float().log_softmax(-1)
        logp[:, PAD] = logp[:, BOS] = logp[:, UNK] = float("-inf")
        logp[done] = float("-inf")  # finished beams only extend with EOS, at no cost
        logp[done, EOS] = 0.0
        vocab = logp.shape[-1]
        cand = (scores.view(n * k, 1) + logp).view(n, k * vocab)
        scores, flat = cand.topk(k, dim=-1)
        origin = (flat // vocab + torch.arange(n, device=flat.device)[:, None] * k).flatten()
        word = (flat % vocab).flatten()
        tokens = torch.cat([tokens[origin], word[:, None]], 1)
        cache = [(a[origin], b[origin]) for a, b in cache]
        lengths = lengths[origin] + (~done[origin]).float()
        done = done[origin] | (word == EOS)
        if done.all():
            break
    normed = scores / lengths.view(n, k).clamp(min=1) ** length_penalty
    best = normed.argmax(-1) + torch.arange(n, device=normed.device) * k
    return [row[: row.index(EOS)] if EOS in row else row for row in tokens[best, 1:].tolist()]


def install() -> None:
    """Make every CaptionDecoder in this process decode with `cached_generate` (used by
    `python -m bench.contenders --kv-cache` to measure the proposal end to end)."""
    from vlpipe.models.mini.fusion import CaptionDecoder

    def generate(self, memory, beams=1, max_tokens=30, length_penalty=0.7):
        return cached_generate(self, memory, beams, max_tokens, length_penalty)

    CaptionDecoder.generate = generate


def memories(model, paths, batch: int) -> list[torch.Tensor]:
    """The decoder's memory for batches of corpus images, through vlpipe's own decode path."""
    from vlpipe.transforms.decode import decode_image

    pixels = [model.preprocess(decode_image(p.read_bytes(), 224).image) for p in paths]
    out = []
    with torch.inference_mode():
        for i in range(0, len(pixels), batch):
            out.append(model.decoder.memory(model.grid(torch.stack(pixels[i : i + batch]))))
    return out


def time_both(model, mems: list[torch.Tensor], beams: int, max_tokens: int) -> dict:
    """Seconds of the current generate and of cached_generate (interleaved per batch)."""
    current = cached = 0.0
    same = total = 0
    with torch.inference_mode():
        for mem in mems:
            t0 = time.perf_counter()
            a = model.decoder.generate(mem, beams, max_tokens)
            t1 = time.perf_counter()
            b = cached_generate(model.decoder, mem, beams, max_tokens)
            cached += time.perf_counter() - t1
            current += t1 - t0
            same += sum(x == y for x, y in zip(a, b, strict=True))
            total += len(a)
    return {"current_s": current, "cached_s": cached, "identical": same, "captions": total}


def run(args) -> dict:
    from vlpipe.models.registry import load_captioner

    report = Report(NAME, TITLE)
    model = load_captioner(args.model, device="cpu")
    paths = ensure(args.images, "mixed")
    mems = memories(model, paths, args.batch_size)
    rows = {}
    for beams in sorted({1, model.num_beams}):
        for threads in (1, 2):
            torch.set_num_threads(threads)
            r = time_both(model, mems, beams, args.max_tokens)
            rows[f"beams={beams}, torch threads={threads}"] = r
            rate_now, rate_new = r["captions"] / r["current_s"], r["captions"] / r["cached_s"]
            report.add(
                Figure(
                    f"caption decoding, beams {beams}, {threads} thread(s)", rate_new, rate_now,
                    "current generate", "captions/s",
                    note=f"{r['identical']}/{r['captions']} identical captions",
                )
            )  # fmt: skip
    report.details = {
        "corpus": describe(paths),
        "model": args.model,
        "batch_size": args.batch_size,
        "max_tokens": args.max_tokens,
        "runs": {k: {kk: round(vv, 3) for kk, vv in v.items()} for k, v in rows.items()},
    }
    return report.finish()


def markdown(result: dict) -> str:
    d = result["details"]
    lines = [
        f"Model `{d['model']}`, {d['corpus']['images']} corpus images in batches of"
        f" {d['batch_size']}, up to {d['max_tokens']} tokens. The `vlpipe` column is"
        " `cached_generate` (bench/kv_cache.py), the baseline the current"
        " `CaptionDecoder.generate`; both produce the same captions:",
        "",
        "| setting | identical captions | current s | cached s |",
        "|---|---|---|---|",
    ]
    for k, r in d["runs"].items():
        lines.append(
            f"| {k} | {r['identical']}/{r['captions']} | {r['current_s']:.2f}"
            f" | {r['cached_s']:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.kv_cache", description=TITLE)
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--model", default="mini")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=30)
    parser.add_argument("--quick", action="store_true", help="32 images")
    args = parser.parse_args(argv)
    if args.quick:
        args.images = 32
    try:
        result = run(args)
    except CorpusError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    from bench.report import update

    update(NAME, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
