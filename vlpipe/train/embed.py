"""Stage 2 of `vlpipe train`: the joint embedding (tower tail + projection heads, symmetric
InfoNCE on cached feature maps), early-stopped on held-out text-to-image recall.

Split out of run.py, which runs the stages in order.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Callable

import numpy as np
import torch

from vlpipe.eval.metrics import retrieval_recalls
from vlpipe.models.mini.efficientnet import EfficientNetLite
from vlpipe.models.mini.fusion import JointHeads
from vlpipe.train.common import Features, TrainOptions, autocast, cosine, fmt


def _tail_params(tower: EfficientNetLite, stage: int) -> list[torch.nn.Parameter]:
    return [p for p in tower.tail(stage).parameters()]


def augment(x: torch.Tensor, crop: float) -> torch.Tensor:
    """Views of cached (N, C, H, H) feature maps: a horizontal flip for half of them and, for a
    `crop` share of batches, random crops of 5/7 or 6/7 of the side (image crops, at feature
    level)."""
    flip = torch.rand(len(x)) < 0.5
    x[flip] = x[flip].flip(-1)
    if random.random() < crop:
        side = round(x.shape[-1] * random.choice((5, 6)) / 7)  # 7x7 -> 5 or 6, 14x14 -> 10 or 12
        offs = torch.randint(0, x.shape[-1] - side + 1, (len(x), 2)).tolist()
        x = torch.stack(
            [v[:, i : i + side, j : j + side] for v, (i, j) in zip(x, offs, strict=True)]
        )
    return x


def caption_neighbours(feats: Features, images: torch.Tensor, k: int = 16) -> torch.Tensor:
    """For each of `images`, the k others whose captions mean the most alike (cosine of the mean
    MiniLM caption embedding): (len(images), k) rows into `images`. Mined once, for hard
    negatives (two photos of dogs on grass in one batch teach more than a dog and a kitchen)."""
    rows = [
        feats.text[int(feats.first_caption[i]) : int(feats.first_caption[i] + feats.n_captions[i])]
        .float()
        .mean(0)
        for i in images
    ]
    emb = torch.nn.functional.normalize(torch.stack(rows), dim=1)
    k = min(k, len(images) - 1)  # a small corpus has fewer others than k
    out = []
    for s in range(0, len(emb), 1024):
        sims = emb[s : s + 1024] @ emb.T
        sims[torch.arange(len(sims)), torch.arange(s, s + len(sims))] = -2  # not itself
        out.append(sims.topk(k, dim=1).indices)
    return torch.cat(out)


def epoch_batches(
    images: torch.Tensor, batch: int, hard: float, neighbours: torch.Tensor | None, group: int = 8
) -> list[torch.Tensor]:
    """One epoch of image batches: a random permutation cut in batches; a `hard` share of them
    is rebuilt as groups of `group` caption neighbours (a seed from the batch and its nearest),
    with no image twice in a batch (it would be its own negative)."""
    perm = torch.randperm(len(images))
    batches = [perm[s : s + batch] for s in range(0, len(perm) - batch + 1, batch)] or [perm]
    if not hard or neighbours is None or neighbours.shape[1] == 0:
        return [images[b] for b in batches]
    out = []
    for rows in batches:
        if random.random() < hard:
            rows = _grouped(rows, neighbours, group)
        out.append(images[rows])
    return out


def _grouped(seeds: torch.Tensor, neighbours: torch.Tensor, group: int) -> torch.Tensor:
    picked: dict[int, None] = {}
    for seed in seeds.tolist():
        if len(picked) >= len(seeds):
            break
        near = neighbours[seed][torch.randperm(neighbours.shape[1])[: group - 1]].tolist()
        for r in [seed, *near]:
            picked.setdefault(r, None)
    return torch.tensor(list(picked)[: len(seeds)])


def text_batch(
    feats: Features, images: torch.Tensor, all_captions: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """MiniLM features of one random caption per image (owner None: row i is image i), or of
    all the images' captions with the batch row each belongs to."""
    if not all_captions:
        pick = (torch.rand(len(images)) * feats.n_captions[images]).long()
        return feats.text[feats.first_caption[images] + pick].float(), None
    counts = feats.n_captions[images]
    owner = torch.repeat_interleave(torch.arange(len(images)), counts)
    starts = torch.repeat_interleave(feats.first_caption[images], counts)
    offset = torch.arange(len(owner)) - torch.repeat_interleave(
        torch.cumsum(counts, 0) - counts, counts
    )
    return feats.text[starts + offset].float(), owner


def fit_embedding(
    tower: EfficientNetLite,
    feats: Features,
    train_idx: list[int],
    holdout_idx: list[int],
    opts: TrainOptions,
    log: Callable[[str], None],
    history: dict[str, list[float]],
) -> tuple[JointHeads, dict]:
    """Train the tower tail and heads; keep the epoch with the best held-out recall."""
    from tqdm import tqdm

    heads = JointHeads(1280, feats.text.shape[1], opts.dim, opts.hidden, opts.head_dropout)
    tail = _tail_params(tower, opts.tail_stage)
    for p in tail:
        p.requires_grad_(opts.unfreeze)
    groups = [{"params": list(heads.parameters()), "lr": opts.embed_lr}]
    if opts.unfreeze:
        groups.append({"params": tail, "lr": opts.tail_lr, "weight_decay": 0.01})
    optim = torch.optim.AdamW(groups, weight_decay=opts.weight_decay)
    base_lrs = [g["lr"] for g in groups]
    train_t = torch.tensor(train_idx)
    steps_per_epoch = max(1, len(train_idx) // opts.embed_batch)
    total = steps_per_epoch * opts.embed_epochs
    neighbours = caption_neighbours(feats, train_t) if opts.hard_negatives else None
    best, best_state, bad, step = None, None, 0, 0
    for epoch in range(opts.embed_epochs):
        heads.train()
        losses = []
        tower.eval()  # BatchNorm keeps its ImageNet statistics; the weights still train
        batches = epoch_batches(train_t, opts.embed_batch, opts.hard_negatives, neighbours)
        bar = tqdm(batches, desc=f"embed {epoch + 1}/{opts.embed_epochs}", leave=False)
        for images in bar:
            x = feats.grid_in[images].float()
            if feats.grid_low is not None and opts.lowres:
                low = torch.rand(len(images)) < opts.lowres
                x[low] = feats.grid_low[images[low]].float()
            x = augment(x, opts.crop)
            text, owner = text_batch(feats, images, opts.all_captions)
            with autocast(opts):
                grid = tower.forward_from(x, opts.tail_stage)
                loss = heads.loss(heads.embed_grid(grid), heads.text(text), owner)
            for g, lr in zip(optim.param_groups, base_lrs, strict=True):
                g["lr"] = lr * cosine(step, total, steps_per_epoch)
            optim.zero_grad()
            loss.backward()
            optim.step()
            step += 1
            losses.append(loss.item())
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
        scores = recall_on(tower, heads, feats, holdout_idx, opts.tail_stage)
        history["embed_loss"].append(float(np.mean(losses)))
        log(f"embed epoch {epoch + 1}: loss {np.mean(losses):.3f}, held-out {fmt(scores)}")
        score = scores["t2i_r1"] + scores["t2i_r5"] + scores["t2i_r10"]
        if best is None or score > best[0]:
            best, bad = (score, scores), 0
            best_state = copy.deepcopy(
                (heads.state_dict(), tower.tail(opts.tail_stage).state_dict())
            )
        else:
            bad += 1
            if bad >= opts.patience:
                break
    heads.load_state_dict(best_state[0])
    tower.tail(opts.tail_stage).load_state_dict(best_state[1])
    for p in tail:
        p.requires_grad_(False)
    return heads.eval(), best[1]


@torch.no_grad()
def recall_on(
    tower: EfficientNetLite, heads: JointHeads, feats: Features, idx: list[int], stage: int
) -> dict:
    """Text-to-image and image-to-text recall among the images `idx` (all their captions)."""
    heads.eval()
    image = torch.cat(
        [
            heads.embed_grid(tower.forward_from(feats.grid_in[idx[s : s + 256]].float(), stage))
            for s in range(0, len(idx), 256)
        ]
    )
    rows = {img: r for r, img in enumerate(idx)}
    caps = [
        c
        for i in idx
        for c in range(
            int(feats.first_caption[i]), int(feats.first_caption[i] + feats.n_captions[i])
        )
    ]
    text = heads.text(feats.text[caps].float())
    query_image = np.array([rows[int(feats.text_image[c])] for c in caps])
    return retrieval_recalls(text.numpy(), image.numpy(), query_image)
