"""The trained parts of vlpipe-mini: joint-embedding heads and the attention captioner.

Both read the image tower's 7x7 grid (N, 1280, 7, 7). The heads map pooled image features and
MiniLM sentence embeddings into one L2-normalised space (symmetric InfoNCE, learned temperature);
the captioner is a small transformer decoder whose word queries cross-attend over the grid cells.
"""

from __future__ import annotations

import math
from collections import Counter

import torch
import torch.nn.functional as F
from torch import nn

from vlpipe.models.mini.decoding import BOS, EOS, PAD, UNK, beam_search
from vlpipe.models.tokenize import tokenize

__all__ = ["SPECIALS", "CaptionDecoder", "JointHeads", "ProjectionHead", "Vocab"]

SPECIALS = ["<pad>", "<bos>", "<eos>", "<unk>"]


class Vocab:
    """Words of the training captions (tokenised like the caption metrics) seen min_count times."""

    def __init__(self, words: list[str]):
        self.words = list(words)
        self.index = {w: i for i, w in enumerate(self.words)}

    @classmethod
    def build(cls, captions: list[str], min_count: int = 3) -> Vocab:
        counts = Counter(w for c in captions for w in tokenize(c).split())
        kept = sorted(
            (w for w, n in counts.items() if n >= min_count), key=lambda w: (-counts[w], w)
        )
        return cls(SPECIALS + kept)

    def __len__(self) -> int:
        return len(self.words)

    def encode(self, caption: str, max_len: int) -> list[int]:
        """BOS, words, EOS; truncated to max_len ids."""
        ids = [self.index.get(w, UNK) for w in tokenize(caption).split()]
        return ([BOS] + ids)[: max_len - 1] + [EOS]

    def decode(self, ids: list[int]) -> str:
        words = []
        for i in ids:
            if i == EOS:
                break
            if i not in (PAD, BOS, UNK):
                words.append(self.words[i])
        return " ".join(words)


class ProjectionHead(nn.Module):
    """MLP with a linear skip into the joint space, L2-normalised output."""

    def __init__(self, in_dim: int, dim: int, hidden: int, dropout: float):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.LayerNorm(in_dim),
            nn.Dropout(dropout),
            nn.Linear(in_dim, hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, dim),
        )
        self.skip = nn.Linear(in_dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.mlp(x) + self.skip(x), dim=-1)


class JointHeads(nn.Module):
    def __init__(self, image_dim: int, text_dim: int, dim: int, hidden: int, dropout: float):
        super().__init__()
        self.image = ProjectionHead(image_dim, dim, hidden, dropout)
        self.text = ProjectionHead(text_dim, dim, hidden, dropout)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def embed_grid(self, grid: torch.Tensor) -> torch.Tensor:
        return self.image(grid.mean((2, 3)))

    def loss(
        self, image: torch.Tensor, text: torch.Tensor, owner: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Symmetric InfoNCE over the batch. Without `owner`, row i of both is a matching pair;
        with it, text row j belongs to image row owner[j] and an image's every caption is a
        positive (each scored against all texts, SupCon style)."""
        scale = self.logit_scale.clamp(max=math.log(100)).exp()
        logits = scale * image @ text.T
        if owner is None:
            target = torch.arange(len(image), device=image.device)
            return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
        positive = owner[None, :] == torch.arange(len(image), device=image.device)[:, None]
        log_p = logits.float().log_softmax(dim=1)
        i2t = -(log_p * positive).sum(1) / positive.sum(1).clamp(min=1)
        return (i2t.mean() + F.cross_entropy(logits.T, owner)) / 2


class CaptionDecoder(nn.Module):
    """Transformer decoder over the grid cells (plus their mean), tied input/output embeddings."""

    def __init__(
        self,
        vocab_size: int,
        grid_dim: int = 1280,
        d_model: int = 256,
        layers: int = 3,
        heads: int = 4,
        ff: int = 1024,
        dropout: float = 0.3,
        max_len: int = 32,
        cells: int = 50,
    ):
        """`cells`: memory positions, the grid's cells plus their mean (7x7 + 1 for Lite0)."""
        super().__init__()
        self.max_len = max_len
        self.memory_proj = nn.Sequential(nn.Linear(grid_dim, d_model), nn.LayerNorm(d_model))
        self.memory_pos = nn.Parameter(torch.zeros(cells, d_model))
        self.embed = nn.Embedding(vocab_size, d_model, padding_idx=PAD)
        self.pos = nn.Parameter(torch.zeros(max_len, d_model))
        layer = nn.TransformerDecoderLayer(
            d_model, heads, ff, dropout, activation="gelu", batch_first=True, norm_first=True
        )
        self.decoder = nn.TransformerDecoder(layer, layers)
        self.norm = nn.LayerNorm(d_model)
        self.out_bias = nn.Parameter(torch.zeros(vocab_size))
        nn.init.normal_(self.embed.weight, std=d_model**-0.5)
        nn.init.normal_(self.pos, std=0.02)
        nn.init.normal_(self.memory_pos, std=0.02)

    def memory(self, grid: torch.Tensor) -> torch.Tensor:
        cells = grid.flatten(2).transpose(1, 2)  # (N, H*W, C)
        cells = torch.cat([cells.mean(1, keepdim=True), cells], 1)
        return self.memory_proj(cells) + self.memory_pos[: cells.shape[1]]

    def logits(self, memory: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """(N, T) token ids to (N, T, V) next-token logits, causal."""
        t = tokens.shape[1]
        x = self.embed(tokens) * math.sqrt(self.embed.embedding_dim) + self.pos[:t]
        mask = nn.Transformer.generate_square_subsequent_mask(t, device=tokens.device)
        pad = torch.zeros(tokens.shape, dtype=x.dtype, device=x.device)
        pad = pad.masked_fill(tokens == PAD, float("-inf"))
        h = self.decoder(
            x, memory, tgt_mask=mask.to(x.dtype), tgt_is_causal=True, tgt_key_padding_mask=pad
        )
        return self.norm(h) @ self.embed.weight.T + self.out_bias

    def loss(self, memory: torch.Tensor, tokens: torch.Tensor, smoothing: float) -> torch.Tensor:
        logits = self.logits(memory, tokens[:, :-1])
        return F.cross_entropy(
            logits.flatten(0, 1),
            tokens[:, 1:].flatten(),
            ignore_index=PAD,
            label_smoothing=smoothing,
        )

    def generate(
        self,
        memory: torch.Tensor,
        beams: int = 1,
        max_tokens: int = 30,
        length_penalty: float = 0.7,
    ) -> list[list[int]]:
        """Beam search (greedy when beams == 1) for a batch, KV-cached; word ids without BOS/EOS."""
        return beam_search(self, memory, beams, max_tokens, length_penalty)
