"""`vlpipe train`: fit vlpipe-mini's trained parts on an image-caption corpus.

1. Cache once: the frozen image-tower stages' output for every image and MiniLM embeddings for
   every caption (the expensive part on CPU).
2. Joint embedding: the image tower's last stage(s) + head conv (unless frozen) and the projection
   heads, symmetric InfoNCE; each step pairs an image with one of its captions at random and
   flips the cached feature map half the time. Early stopping on a held-out slice of TRAIN.
3. Captioner: the decoder on the adapted grids, teacher forcing with label smoothing; early
   stopping on the held-out slice's loss.
4. Save, then report dev-split recall, BLEU-4 and CIDEr.
"""

from __future__ import annotations

import copy
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from vlpipe.models.mini import cache
from vlpipe.models.mini.data import Corpus, load_corpus
from vlpipe.models.mini.efficientnet import STAGES, EfficientNetLite0
from vlpipe.models.mini.fusion import PAD, CaptionDecoder, JointHeads, Vocab
from vlpipe.models.mini.model import save_model


@dataclass
class TrainOptions:
    seed: int = 0
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
    bf16: bool = True  # bf16 autocast for training steps (about 2x faster on recent CPUs)


@dataclass
class Features:
    grid_in: torch.Tensor  # (N, C, 7, 7) fp16, the frozen stages' output
    text: torch.Tensor  # (M, 384) fp16
    text_image: torch.Tensor  # (M,) owner image of each caption
    first_caption: torch.Tensor  # (N,) index of each image's first caption
    n_captions: torch.Tensor  # (N,)


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

    tower = EfficientNetLite0.pretrained()
    t1 = time.time()
    history: dict[str, list[float]] = {"embed_loss": [], "caption_loss": []}
    heads, best = fit_embedding(tower, feats, train_idx, holdout_idx, opts, log, history)
    log(f"embedding trained in {time.time() - t1:.0f} s (held-out {_fmt(best)})")

    t2 = time.time()
    grids = _grids(tower, opts.tail_stage, feats.grid_in)
    vocab = Vocab.build([c for i in train_idx for c in corpus.captions[i]], opts.min_word_count)
    decoder = fit_captioner(grids, corpus, vocab, train_idx, holdout_idx, opts, log, history)
    log(f"captioner trained in {time.time() - t2:.0f} s (vocabulary {len(vocab)})")

    config = _config(opts, vocab)
    tail = {k: v for k, v in tower.tail(opts.tail_stage).state_dict().items()}
    tail = {_tower_key(tower, k): v for k, v in tail.items()}
    save_model(output, config, tail, heads, decoder)
    metrics = evaluate(output, corpus, dev_idx, feats, opts, log)
    metrics["train_seconds"] = round(time.time() - t0)
    metrics["history"] = history
    _record(output, metrics)
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
    grid_in = cache.image_features(corpus.paths, cache_dir, opts.tail_stage)
    text = cache.text_features(texts, cache_dir)
    return Features(
        grid_in=torch.from_numpy(grid_in),
        text=torch.from_numpy(text),
        text_image=torch.tensor(owner),
        first_caption=torch.cumsum(counts, 0) - counts,
        n_captions=counts,
    )


def _tower_key(tower: EfficientNetLite0, key: str) -> str:
    """ModuleDict keys of `tower.tail()` back to the tower's own parameter names."""
    head, _, rest = key.partition(".")
    return f"_blocks.{head}.{rest}" if head.isdigit() else key


def _tail_params(tower: EfficientNetLite0, stage: int) -> list[torch.nn.Parameter]:
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


def _autocast(opts: TrainOptions):
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=opts.bf16)


def _cosine(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def fit_embedding(
    tower: EfficientNetLite0,
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
    best, best_state, bad, step = None, None, 0, 0
    for epoch in range(opts.embed_epochs):
        heads.train()
        losses = []
        tower.eval()  # BatchNorm keeps its ImageNet statistics; the weights still train
        perm = train_t[torch.randperm(len(train_t))]
        bar = tqdm(
            range(steps_per_epoch), desc=f"embed {epoch + 1}/{opts.embed_epochs}", leave=False
        )
        for b in bar:
            images = perm[b * opts.embed_batch : (b + 1) * opts.embed_batch]
            x = feats.grid_in[images].float()
            x = augment(x, opts.crop)
            pick = (torch.rand(len(images)) * feats.n_captions[images]).long()
            text = feats.text[feats.first_caption[images] + pick].float()
            with _autocast(opts):
                grid = tower.forward_from(x, opts.tail_stage)
                loss = heads.loss(heads.embed_grid(grid), heads.text(text))
            for g, lr in zip(optim.param_groups, base_lrs, strict=True):
                g["lr"] = lr * _cosine(step, total, steps_per_epoch)
            optim.zero_grad()
            loss.backward()
            optim.step()
            step += 1
            losses.append(loss.item())
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
        scores = recall_on(tower, heads, feats, holdout_idx, opts.tail_stage)
        history["embed_loss"].append(float(np.mean(losses)))
        log(f"embed epoch {epoch + 1}: loss {np.mean(losses):.3f}, held-out {_fmt(scores)}")
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
    tower: EfficientNetLite0, heads: JointHeads, feats: Features, idx: list[int], stage: int
) -> dict:
    """Text-to-image and image-to-text recall among the images `idx` (all their captions)."""
    from vlpipe.eval.metrics import retrieval_recalls

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


@torch.no_grad()
def _grids(tower: EfficientNetLite0, stage: int, grid_in: torch.Tensor) -> torch.Tensor:
    """The adapted tower's (N, 1280, 7, 7) grid for every image, fp16."""
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
            with _autocast(opts):
                loss = _caption_loss(decoder, grids, table, batch, opts.label_smoothing)
            for g in optim.param_groups:
                g["lr"] = opts.caption_lr * _cosine(step, total, steps_per_epoch)
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


def _config(opts: TrainOptions, vocab: Vocab) -> dict:
    return {
        "dim": opts.dim,
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
        },
        "vocab": vocab.words,
        "train_options": asdict(opts),
    }


def evaluate(
    model_dir: str,
    corpus: Corpus,
    dev_idx: list[int],
    feats: Features,
    opts: TrainOptions,
    log: Callable[[str], None],
) -> dict:
    """Dev metrics of the saved model (fp16 weights as shipped), from the cached tower features;
    sets the model's default beam width to the one with the best dev CIDEr."""
    from vlpipe.eval.metrics import caption_scores, retrieval_recalls
    from vlpipe.models.mini.model import MiniModel

    model = MiniModel.load(model_dir, device="cpu", precision="fp32")
    tower = model.tower()
    grids = _grids(tower, opts.tail_stage, feats.grid_in[dev_idx]).float()
    image = model.embed_grid(grids)
    rows = [
        (r, int(feats.first_caption[i]) + j)
        for r, i in enumerate(dev_idx)
        for j in range(int(feats.n_captions[i]))
    ]
    with torch.no_grad():  # the cached MiniLM features, through the saved text head
        text = model.heads.text(feats.text[[c for _, c in rows]].float()).numpy()
    metrics = retrieval_recalls(text, image, np.array([r for r, _ in rows]))
    refs = {str(r): corpus.captions[i] for r, i in enumerate(dev_idx)}
    by_beam = {}
    for beams in opts.beams:
        model.num_beams = beams
        out = []
        for s in range(0, len(grids), 100):
            out += model.captions_from_grid(grids[s : s + 100])
        by_beam[beams] = caption_scores({str(r): c for r, c in enumerate(out)}, refs)
        log(f"dev captions, beams {beams}: {_fmt(by_beam[beams])}; e.g. {out[0]!r}")
    best_beams = max(by_beam, key=lambda b: by_beam[b]["cider"])
    metrics.update(by_beam[best_beams])
    metrics.update(
        num_beams=best_beams,
        n_images=len(dev_idx),
        by_beams={str(b): s for b, s in by_beam.items()},
    )
    log(f"dev ({len(dev_idx)} images): {_fmt(metrics)}")
    return metrics


def _record(model_dir: str, metrics: dict) -> None:
    """Store the dev metrics and the chosen beam width in the model's config."""
    import json

    from vlpipe.models.mini import CONFIG_NAME

    path = os.path.join(model_dir, CONFIG_NAME)
    with open(path) as f:
        config = json.load(f)
    config["num_beams"] = metrics["num_beams"]
    config["dev_metrics"] = metrics
    with open(path, "w") as f:
        json.dump(config, f, indent=1)


def _fmt(scores: dict) -> str:
    keys = ["t2i_r1", "t2i_r5", "t2i_r10", "i2t_r1", "i2t_r5", "i2t_r10", "bleu4", "cider"]
    return " ".join(f"{k} {scores[k]:.3f}" for k in keys if k in scores)


__all__ = ["TrainOptions", "train", "fit_embedding", "fit_captioner", "evaluate", "STAGES"]
