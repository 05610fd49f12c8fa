"""`vlpipe train`: fit vlpipe-mini's trained parts on an image-caption corpus.

1. Cache once: the frozen image-tower stages' output for every image and MiniLM embeddings for
   every caption (the expensive part on CPU).
2. Joint embedding: the image tower's last stage(s) + head conv (unless frozen) and the projection
   heads, symmetric InfoNCE; each step pairs an image with one of its captions at random and
   flips the cached feature map half the time. Early stopping on a held-out slice of TRAIN.
3. Captioner: the decoder on the adapted grids, teacher forcing with label smoothing; early
   stopping on the held-out slice's loss.
4. Save, then report dev-split recall, BLEU-4 and CIDEr.

This module is the driver; stage 1 is in cache, stage 2 in embed, stage 3 in caption, stage 4 in
evaluate, and the options and helpers they share in common.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable
from dataclasses import asdict

import numpy as np
import torch

from vlpipe.models.mini.efficientnet import STAGES, EfficientNetLite
from vlpipe.models.mini.fusion import Vocab
from vlpipe.models.mini.model import save_model
from vlpipe.train import cache
from vlpipe.train.caption import fit_captioner, tower_grids
from vlpipe.train.common import Features, TrainOptions, fmt
from vlpipe.train.data import Corpus, load_corpus
from vlpipe.train.embed import augment, fit_embedding, recall_on
from vlpipe.train.evaluate import evaluate, record_metrics


def train(
    data: str,
    output: str,
    opts: TrainOptions,
    cache_dir: str | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Train, write the model directory and return the dev metrics."""
    torch.set_num_threads(opts.threads)
    _seed(opts.seed)
    corpus = load_corpus(data)
    train_idx, holdout_idx, dev_idx = _split(corpus, opts)
    log(f"images: {len(train_idx)} train, {len(holdout_idx)} held out, {len(dev_idx)} dev")
    t0 = time.time()
    feats = _features(corpus, cache_dir or os.path.join(output, "cache"), opts)
    log(f"features cached in {time.time() - t0:.0f} s")

    tower = EfficientNetLite.pretrained(opts.tower)
    t1 = time.time()
    history: dict[str, list[float]] = {"embed_loss": [], "caption_loss": []}
    heads, best = fit_embedding(tower, feats, train_idx, holdout_idx, opts, log, history)
    log(f"embedding trained in {time.time() - t1:.0f} s (held-out {fmt(best)})")

    t2 = time.time()
    grids = tower_grids(tower, opts.tail_stage, feats.grid_in)
    vocab = Vocab.build([c for i in train_idx for c in corpus.captions[i]], opts.min_word_count)
    decoder = fit_captioner(grids, corpus, vocab, train_idx, holdout_idx, opts, log, history)
    log(f"captioner trained in {time.time() - t2:.0f} s (vocabulary {len(vocab)})")

    config = _config(opts, vocab, decoder.memory_pos.shape[0])
    tail = {k: v for k, v in tower.tail(opts.tail_stage).state_dict().items()}
    tail = {_tower_key(tower, k): v for k, v in tail.items()}
    save_model(output, config, tail, heads, decoder)
    metrics = evaluate(output, corpus, dev_idx, feats, opts, log, select_idx=holdout_idx)
    metrics["train_seconds"] = round(time.time() - t0)
    metrics["history"] = history
    record_metrics(output, metrics)
    return metrics


def _seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _split(corpus: Corpus, opts: TrainOptions) -> tuple[list[int], list[int], list[int]]:
    train = corpus.indices("train")
    if opts.max_train_images:
        train = train[: opts.max_train_images]
    n_hold = min(opts.holdout, max(1, len(train) // 10))
    dev = corpus.indices("dev") or train[-n_hold:]
    return train[:-n_hold], train[-n_hold:], dev


def _features(corpus: Corpus, cache_dir: str, opts: TrainOptions) -> Features:
    texts, owner = [], []
    for i, caps in enumerate(corpus.captions):
        texts += caps
        owner += [i] * len(caps)
    counts = torch.tensor([len(c) for c in corpus.captions])
    grid_in = cache.image_features(corpus.paths, cache_dir, opts.tail_stage, tower=opts.tower)
    grid_low = None
    if opts.lowres:
        low = cache.image_features(
            corpus.paths, cache_dir, opts.tail_stage, view="lowres", tower=opts.tower
        )
        grid_low = torch.from_numpy(low)
    text = cache.text_features(texts, cache_dir)
    return Features(
        grid_in=torch.from_numpy(grid_in),
        text=torch.from_numpy(text),
        text_image=torch.tensor(owner),
        first_caption=torch.cumsum(counts, 0) - counts,
        n_captions=counts,
        grid_low=grid_low,
    )


def _tower_key(tower: EfficientNetLite, key: str) -> str:
    """ModuleDict keys of `tower.tail()` back to the tower's own parameter names."""
    head, _, rest = key.partition(".")
    return f"_blocks.{head}.{rest}" if head.isdigit() else key


def _config(opts: TrainOptions, vocab: Vocab, cells: int) -> dict:
    return {
        "dim": opts.dim,
        "tower": opts.tower,
        "tail_stage": opts.tail_stage,
        "num_beams": max(opts.beams),
        "heads": {"hidden": opts.hidden, "dropout": opts.head_dropout},
        "decoder": {
            "d_model": opts.d_model,
            "layers": opts.layers,
            "heads": opts.heads,
            "ff": opts.ff,
            "dropout": opts.decoder_dropout,
            "max_len": opts.max_len,
            "cells": cells,
        },
        "vocab": vocab.words,
        "train_options": asdict(opts),
    }


__all__ = [
    "STAGES",
    "Features",
    "TrainOptions",
    "augment",
    "evaluate",
    "fit_captioner",
    "fit_embedding",
    "recall_on",
    "train",
]
