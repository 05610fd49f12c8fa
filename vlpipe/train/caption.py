"""Stage 3 of `vlpipe train`: the caption decoder on the adapted tower's grids, teacher forcing
with label smoothing, early-stopped on the held-out loss.

Split out of run.py, which runs the stages in order.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Callable

import numpy as np
import torch

from vlpipe.models.mini.efficientnet import EfficientNetLite
from vlpipe.models.mini.fusion import PAD, CaptionDecoder, Vocab
from vlpipe.train.common import TrainOptions, autocast, cosine
from vlpipe.train.data import Corpus


@torch.no_grad()
def tower_grids(tower: EfficientNetLite, stage: int, grid_in: torch.Tensor) -> torch.Tensor:
    """The adapted tower's (N, 1280, H, H) grid for every image, fp16."""
    tower.eval()
    return torch.cat(
        [
            tower.forward_from(grid_in[s : s + 256].float(), stage).half()
            for s in range(0, len(grid_in), 256)
        ]
    )


def _token_table(
    corpus: Corpus, vocab: Vocab, max_len: int
) -> tuple[torch.Tensor, list[list[int]]]:
    """All captions as padded id rows, and the row numbers of each image's captions."""
    rows, of_image = [], []
    for caps in corpus.captions:
        of_image.append(list(range(len(rows), len(rows) + len(caps))))
        rows += [vocab.encode(c, max_len) for c in caps]
    table = torch.full((len(rows), max_len), PAD, dtype=torch.long)
    for r, ids in enumerate(rows):
        table[r, : len(ids)] = torch.tensor(ids)
    return table, of_image


def fit_captioner(
    grids: torch.Tensor,
    corpus: Corpus,
    vocab: Vocab,
    train_idx: list[int],
    holdout_idx: list[int],
    opts: TrainOptions,
    log: Callable[[str], None],
    history: dict[str, list[float]],
) -> CaptionDecoder:
    """Teacher forcing with label smoothing; keep the epoch with the lowest held-out loss."""
    from tqdm import tqdm

    decoder = CaptionDecoder(
        len(vocab),
        grids.shape[1],
        opts.d_model,
        opts.layers,
        opts.heads,
        opts.ff,
        opts.decoder_dropout,
        opts.max_len,
        grids.shape[2] * grids.shape[3] + 1,
    )
    table, of_image = _token_table(corpus, vocab, opts.max_len)
    optim = torch.optim.AdamW(
        decoder.parameters(), lr=opts.caption_lr, weight_decay=opts.weight_decay
    )
    n_pairs = len(train_idx) * opts.captions_per_image
    steps_per_epoch = max(1, n_pairs // opts.caption_batch)
    total = steps_per_epoch * opts.caption_epochs
    hold_pairs = [(i, r) for i in holdout_idx for r in of_image[i]]
    best, best_state, bad, step = None, None, 0, 0
    for epoch in range(opts.caption_epochs):
        decoder.train()
        losses = []
        pairs = [
            (i, r)
            for i in train_idx
            for r in random.sample(of_image[i], min(opts.captions_per_image, len(of_image[i])))
        ]
        random.shuffle(pairs)
        bar = tqdm(
            range(steps_per_epoch), desc=f"caption {epoch + 1}/{opts.caption_epochs}", leave=False
        )
        for b in bar:
            batch = pairs[b * opts.caption_batch : (b + 1) * opts.caption_batch]
            with autocast(opts):
                loss = _caption_loss(decoder, grids, table, batch, opts.label_smoothing)
            for g in optim.param_groups:
                g["lr"] = opts.caption_lr * cosine(step, total, steps_per_epoch)
            optim.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(decoder.parameters(), 1.0)
            optim.step()
            step += 1
            losses.append(loss.item())
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
        decoder.eval()
        with torch.no_grad():
            held = [
                _caption_loss(decoder, grids, table, hold_pairs[s : s + 512], 0.0).item()
                for s in range(0, len(hold_pairs), 512)
            ]
        held_loss = float(np.mean(held))
        history["caption_loss"].append(float(np.mean(losses)))
        log(f"caption epoch {epoch + 1}: loss {np.mean(losses):.3f}, held-out loss {held_loss:.3f}")
        if best is None or held_loss < best:
            best, bad, best_state = held_loss, 0, copy.deepcopy(decoder.state_dict())
        else:
            bad += 1
            if bad >= opts.patience:
                break
    decoder.load_state_dict(best_state)
    return decoder.eval()


def _caption_loss(decoder, grids, table, pairs, smoothing) -> torch.Tensor:
    images = torch.tensor([i for i, _ in pairs])
    tokens = table[torch.tensor([r for _, r in pairs])]
    tokens = tokens[:, : int((tokens != PAD).sum(1).max())]
    return decoder.loss(decoder.memory(grids[images].float()), tokens, smoothing)
