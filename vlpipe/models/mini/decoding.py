"""Beam search (greedy when beams == 1) for vlpipe-mini's caption decoder.

Captioning is most of `vlpipe run`'s CPU time with vlpipe-mini (bench/profile.py), so no work is
spent twice:
- each step computes the new token only: per-layer self-attention keys/values are cached and
  reordered with the beams, and only the last position is projected to the vocabulary;
- cross-attention keys/values over the memory cells are computed once per image, not per beam:
  an image's beams are the queries of one attention over its cells;
- an image leaves the batch as soon as all its beams have ended, so a batch's long captions do
  not make every other image's rows run to the end.
`FullPrefixStep` reruns the whole nn.TransformerDecoder on the prefix at every step: it is the
reference the cached step is tested and benchmarked against (same token ids, bench/kv_cache.py).
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
    """Next-token logits, one token of compute per step (eval-mode maths: no dropout).

    `memory` has one row per image; rows of the token batch are `beams` per image, image-major."""

    def __init__(self, decoder, memory: torch.Tensor, beams: int):
        self.decoder, self.beams = decoder, beams
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
        for i, layer in enumerate(self.layers):
            x = x + self._self_attention(i, layer, layer.norm1(x))
            x = x + self._cross_attention(i, layer, layer.norm2(x))
            x = x + layer.linear2(layer.activation(layer.linear1(layer.norm3(x))))
        return dec.norm(x[:, -1]) @ dec.embed.weight.T + dec.out_bias

    def _self_attention(self, i: int, layer, x: torch.Tensor) -> torch.Tensor:
        sa = layer.self_attn
        qkv = F.linear(x, sa.in_proj_weight, sa.in_proj_bias)
        q, k, v = (_split_heads(z, self.heads) for z in qkv.split(x.shape[-1], -1))
        if self.cache[i] is not None:
            k, v = torch.cat([self.cache[i][0], k], 2), torch.cat([self.cache[i][1], v], 2)
        self.cache[i] = (k, v)
        return sa.out_proj(_merge_heads(F.scaled_dot_product_attention(q, k, v)))

    def _cross_attention(self, i: int, layer, x: torch.Tensor) -> torch.Tensor:
        """The beams of an image, (n*beams, 1, d), as `beams` queries over its one set of cells."""
        ca, d, k = layer.multihead_attn, x.shape[-1], self.beams
        q = F.linear(x, ca.in_proj_weight[:d], ca.in_proj_bias[:d]).view(-1, k, d)
        out = F.scaled_dot_product_attention(_split_heads(q, self.heads), *self.cross[i])
        return ca.out_proj(_merge_heads(out).reshape(-1, 1, d))

    def reorder(self, origin: torch.Tensor) -> None:
        self.cache = [(k[origin], v[origin]) for k, v in self.cache]  # type: ignore[index]

    def keep(self, images: torch.Tensor) -> None:
        """Only these images (indices into the current ones) decode on; call after reorder."""
        rows = _rows(images, self.beams)
        self.cache = [(k[rows], v[rows]) for k, v in self.cache]  # type: ignore[index]
        self.cross = [(k[images], v[images]) for k, v in self.cross]


class FullPrefixStep:
    """The whole prefix through the decoder each step: slow, the reference for CachedStep."""

    def __init__(self, decoder, memory: torch.Tensor, beams: int):
        self.decoder, self.beams = decoder, beams
        self.memory = memory.repeat_interleave(beams, 0)

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.decoder.logits(self.memory, tokens)[:, -1]

    def reorder(self, origin: torch.Tensor) -> None:
        """Beams never leave their image, whose memory rows are all equal: nothing to do."""

    def keep(self, images: torch.Tensor) -> None:
        self.memory = self.memory[_rows(images, self.beams)]


def _rows(images: torch.Tensor, beams: int) -> torch.Tensor:
    return (images[:, None] * beams + torch.arange(beams, device=images.device)).flatten()


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
    step = step_cls(decoder, memory, k)
    tokens = torch.full((n * k, 1), BOS, dtype=torch.long, device=device)
    scores = torch.full((n, k), float("-inf"), device=device)
    scores[:, 0] = 0.0
    done = torch.zeros(n * k, dtype=torch.bool, device=device)
    lengths = torch.zeros(n * k, device=device)
    live = torch.arange(n, device=device)  # the images still decoding, in row order
    out: list[list[int]] = [[] for _ in range(n)]
    for _ in range(min(max_tokens, decoder.max_len - 1)):
        logp = step(tokens).float().log_softmax(-1)
        logp[:, PAD] = logp[:, BOS] = logp[:, UNK] = float("-inf")
        logp[done] = float("-inf")  # finished beams only extend with EOS, at no cost
        logp[done, EOS] = 0.0
        m, vocab = len(live), logp.shape[-1]
        cand = (scores.view(m * k, 1) + logp).view(m, k * vocab)
        scores, flat = cand.topk(k, dim=-1)
        origin = (flat // vocab + torch.arange(m, device=device)[:, None] * k).flatten()
        tokens = torch.cat([tokens[origin], (flat % vocab).view(-1, 1)], 1)
        step.reorder(origin)
        lengths = lengths[origin] + (~done[origin]).float()
        done = done[origin] | (tokens[:, -1] == EOS)
        ended = done.view(m, k).all(1)
        if ended.any():  # these images leave the batch with their best beam
            best = _best(tokens, scores, lengths, ended, length_penalty)
            for image, row in zip(live[ended].tolist(), best, strict=True):
                out[image] = row
            kept = (~ended).nonzero().flatten()
            rows = _rows(kept, k)
            tokens, scores, lengths, done = tokens[rows], scores[kept], lengths[rows], done[rows]
            live = live[kept]
            if not len(live):
                return out
            step.keep(kept)
    best = _best(tokens, scores, lengths, torch.ones_like(live, dtype=torch.bool), length_penalty)
    for image, row in zip(live.tolist(), best, strict=True):
        out[image] = row
    return out


def _best(
    tokens: torch.Tensor,
    scores: torch.Tensor,
    lengths: torch.Tensor,
    images: torch.Tensor,
    length_penalty: float,
) -> list[list[int]]:
    """The best beam's words of each image where the `images` mask is set."""
    k = scores.shape[1]
    rows = _rows(images.nonzero().flatten(), k)
    normed = scores[images] / lengths[rows].view(-1, k).clamp(min=1) ** length_penalty
    best = rows.view(-1, k)[torch.arange(len(normed)), normed.argmax(-1)]
    return [row[: row.index(EOS)] if EOS in row else row for row in tokens[best, 1:].tolist()]
