"""Beam search (greedy when beams == 1) for vlpipe-mini's caption decoder.

Captioning is most of `vlpipe run`'s CPU time with vlpipe-mini (bench/profile.py), so each step
computes the new token only: per-layer self-attention keys/values are cached and reordered with
the beams, cross-attention keys/values over the 50 memory cells are computed once per image, and
only the last position is projected to the vocabulary. `FullPrefixStep` reruns the whole
nn.TransformerDecoder on the prefix at every step: it is the reference the cached step is tested
and benchmarked against (same token ids, bench/kv_cache.py for the speed-up).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["CachedStep", "FullPrefixStep", "beam_search"]

BOS, EOS, PAD, UNK = 1, 2, 0, 3


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    n, t, d = x.shape
    return x.view(n, t, heads, d // heads).transpose(1, 2)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    n, h, t, hd = x.shape
    return x.transpose(1, 2).reshape(n, t, h * hd)


class CachedStep:
    """Next-token log-probabilities, one token of compute per step (eval-mode maths: no dropout)."""

    def __init__(self, decoder, memory: torch.Tensor):
        self.decoder = decoder
        self.layers = decoder.decoder.layers
        self.heads = self.layers[0].self_attn.num_heads
        self.scale = math.sqrt(decoder.embed.embedding_dim)
        d = memory.shape[-1]
        self.cross = []
        for layer in self.layers:
            attn = layer.multihead_attn
            kv = F.linear(memory, attn.in_proj_weight[d:], attn.in_proj_bias[d:])
            k, v = kv[..., :d], kv[..., d:]
            self.cross.append((_split_heads(k, self.heads), _split_heads(v, self.heads)))
        self.cache: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(self.layers)

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        dec, t = self.decoder, tokens.shape[1] - 1
        x = dec.embed(tokens[:, -1:]) * self.scale + dec.pos[t]
        d = x.shape[-1]
        for i, layer in enumerate(self.layers):
            sa = layer.self_attn
            qkv = F.linear(layer.norm1(x), sa.in_proj_weight, sa.in_proj_bias)
            q, k, v = (_split_heads(z, self.heads) for z in qkv.split(d, -1))
            if self.cache[i] is not None:
                k, v = torch.cat([self.cache[i][0], k], 2), torch.cat([self.cache[i][1], v], 2)
            self.cache[i] = (k, v)
            x = x + sa.out_proj(_merge_heads(F.scaled_dot_product_attention(q, k, v)))
            ca = layer.multihead_attn
            q = _split_heads(
                F.linear(layer.norm2(x), ca.in_proj_weight[:d], ca.in_proj_bias[:d]), self.heads
            )
            x = x + ca.out_proj(_merge_heads(F.scaled_dot_product_attention(q, *self.cross[i])))
            x = x + layer.linear2(layer.activation(layer.linear1(layer.norm3(x))))
        return dec.norm(x[:, -1]) @ dec.embed.weight.T + dec.out_bias

    def reorder(self, origin: torch.Tensor) -> None:
        self.cache = [(k[origin], v[origin]) for k, v in self.cache]  # type: ignore[index]


class FullPrefixStep:
    """The whole prefix through the decoder each step: slow, the reference for CachedStep."""

    def __init__(self, decoder, memory: torch.Tensor):
        self.decoder, self.memory = decoder, memory

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.decoder.logits(self.memory, tokens)[:, -1]

    def reorder(self, origin: torch.Tensor) -> None:
        """Beams never leave their image, whose memory rows are all equal: nothing to do."""


@torch.no_grad()
def beam_search(
    decoder,
    memory: torch.Tensor,
    beams: int = 1,
    max_tokens: int = 30,
    length_penalty: float = 0.7,
    step_cls: type = CachedStep,
) -> list[list[int]]:
    """Word ids (no BOS/EOS) per image; scores normalised by length**length_penalty."""
    n, k = memory.shape[0], max(1, beams)
    device = memory.device
    steps = min(max_tokens, decoder.max_len - 1)
    step = step_cls(decoder, memory.repeat_interleave(k, 0))
    tokens = torch.full((n * k, 1), BOS, dtype=torch.long, device=device)
    scores = torch.full((n, k), float("-inf"), device=device)
    scores[:, 0] = 0.0
    done = torch.zeros(n * k, dtype=torch.bool, device=device)
    lengths = torch.zeros(n * k, device=device)
    for _ in range(steps):
        logp = step(tokens).float().log_softmax(-1)
        logp[:, PAD] = logp[:, BOS] = logp[:, UNK] = float("-inf")
        logp[done] = float("-inf")  # finished beams only extend with EOS, at no cost
        logp[done, EOS] = 0.0
        vocab = logp.shape[-1]
        cand = (scores.view(n * k, 1) + logp).view(n, k * vocab)
        scores, flat = cand.topk(k, dim=-1)
        origin = (flat // vocab + torch.arange(n, device=device)[:, None] * k).flatten()
        word = (flat % vocab).flatten()
        tokens = torch.cat([tokens[origin], word[:, None]], 1)
        step.reorder(origin)
        lengths = lengths[origin] + (~done[origin]).float()
        done = done[origin] | (word == EOS)
        if done.all():
            break
    normed = scores / lengths.view(n, k).clamp(min=1) ** length_penalty
    best = normed.argmax(-1) + torch.arange(n, device=device) * k
    return [row[: row.index(EOS)] if EOS in row else row for row in tokens[best, 1:].tolist()]
