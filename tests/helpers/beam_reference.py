"""The plain beam search vlpipe-mini's decoder is checked against: the whole prefix through the
decoder every step, every beam of every image to the last step, cross-attention per beam row.
Slow and simple on purpose (it is the algorithm before the decoder was optimised)."""

from __future__ import annotations

import torch

from vlpipe.models.mini.decoding import BOS, EOS, PAD, UNK


@torch.no_grad()
def plain_beam_search(
    decoder, memory: torch.Tensor, beams: int, max_tokens: int, length_penalty: float = 0.7
) -> list[list[int]]:
    n, k = memory.shape[0], max(1, beams)
    memory = memory.repeat_interleave(k, 0)
    tokens = torch.full((n * k, 1), BOS, dtype=torch.long)
    scores = torch.full((n, k), float("-inf"))
    scores[:, 0] = 0.0
    done = torch.zeros(n * k, dtype=torch.bool)
    lengths = torch.zeros(n * k)
    for _ in range(min(max_tokens, decoder.max_len - 1)):
        logp = decoder.logits(memory, tokens)[:, -1].float().log_softmax(-1)
        logp[:, PAD] = logp[:, BOS] = logp[:, UNK] = float("-inf")
        logp[done] = float("-inf")
        logp[done, EOS] = 0.0
        vocab = logp.shape[-1]
        scores, flat = (scores.view(n * k, 1) + logp).view(n, k * vocab).topk(k, dim=-1)
        origin = (flat // vocab + torch.arange(n)[:, None] * k).flatten()
        word = (flat % vocab).flatten()
        tokens = torch.cat([tokens[origin], word[:, None]], 1)
        lengths = lengths[origin] + (~done[origin]).float()
        done = done[origin] | (word == EOS)
        if done.all():
            break
    normed = scores / lengths.view(n, k).clamp(min=1) ** length_penalty
    best = normed.argmax(-1) + torch.arange(n) * k
    return [row[: row.index(EOS)] if EOS in row else row for row in tokens[best, 1:].tolist()]
