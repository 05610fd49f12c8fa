"""Options, cached features and small helpers shared by the stages of `vlpipe train`.

A module of its own so the stage modules (embed, caption, evaluate) need not import the driver
(run.py), which imports them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch


@dataclass
class TrainOptions:
    seed: int = 0
    tower: str = "lite0"  # image tower (efficientnet.TOWERS)
    tail_stage: int = 6  # first trainable tower stage; len(STAGES) = only the frozen head conv
    unfreeze: bool = True
    dim: int = 256
    hidden: int = 1024
    head_dropout: float = 0.2
    embed_epochs: int = 10
    embed_batch: int = 256
    embed_lr: float = 1e-3
    tail_lr: float = 1e-4
    weight_decay: float = 0.05
    caption_epochs: int = 6
    caption_batch: int = 128
    captions_per_image: int = 1  # caption pairs drawn per image per captioner epoch
    caption_lr: float = 1e-3
    d_model: int = 256
    layers: int = 3
    heads: int = 4
    ff: int = 1024
    decoder_dropout: float = 0.3
    label_smoothing: float = 0.1
    max_len: int = 24
    min_word_count: int = 3
    holdout: int = 500  # train images held out for early stopping
    patience: int = 3
    beams: list[int] = field(default_factory=lambda: [1, 3])
    max_train_images: int | None = None  # quick experiments on a subset
    threads: int = 2
    crop: float = 0.0  # share of embedding batches trained on random crops of the feature map
    lowres: float = 0.0  # share of embedding images drawn from the small-photo view
    all_captions: bool = False  # every caption of a batch image is a positive, not one drawn
    hard_negatives: float = 0.0  # share of embedding batches made of caption neighbours
    bf16: bool = True  # bf16 autocast for training steps (about 2x faster on recent CPUs)


@dataclass
class Features:
    grid_in: torch.Tensor  # (N, C, H, H) fp16, the frozen stages' output
    text: torch.Tensor  # (M, 384) fp16
    text_image: torch.Tensor  # (M,) owner image of each caption
    first_caption: torch.Tensor  # (N,) index of each image's first caption
    n_captions: torch.Tensor  # (N,)
    grid_low: torch.Tensor | None = None  # like grid_in, of the small-photo view (cache.degrade)


def autocast(opts: TrainOptions):
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=opts.bf16)


def cosine(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def fmt(scores: dict) -> str:
    keys = ["t2i_r1", "t2i_r5", "t2i_r10", "i2t_r1", "i2t_r5", "i2t_r10", "bleu4", "cider"]
    return " ".join(f"{k} {scores[k]:.3f}" for k in keys if k in scores)
