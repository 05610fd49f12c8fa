"""Retrieval Recall@K and caption BLEU-4 / CIDEr-D, as the image-captioning literature reports them.

Recall follows the Flickr8k/30k protocol: every reference caption is a text-to-image query against
all images; an image counts as found by image-to-text search when ANY of its captions ranks in the
top K among all captions. Ties count against the query, so a model that gives every item the same
score gets no credit.

BLEU-4 and CIDEr-D are the coco-caption scorers (package `pycocoevalcap`, pure Python) fed with a
simple, documented tokenisation (`tokenize`, from vlpipe.models.tokenize, which vlpipe-mini's
vocabulary shares) instead of coco-caption's Java PTB tokenizer: lowercase, every run of characters
other than letters and digits is a word break (so punctuation disappears and "dog's" becomes
"dog s"). Scores are on the 0-1 scale for BLEU and the usual x10 scale for CIDEr-D.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from vlpipe.models.tokenize import tokenize

__all__ = ["caption_scores", "retrieval_recalls", "tokenize"]


def _t2i_ranks(text_emb: np.ndarray, image_emb: np.ndarray, query_image: np.ndarray) -> np.ndarray:
    """For each query, how many OTHER images score at least as high as its own image."""
    ranks = np.empty(len(text_emb), dtype=np.int64)
    for start in range(0, len(text_emb), 2048):  # bounded memory on large eval sets
        stop = start + 2048
        sims = text_emb[start:stop] @ image_emb.T
        rows = np.arange(len(sims))
        own = sims[rows, query_image[start:stop]]
        ranks[start:stop] = (sims >= own[:, None]).sum(axis=1) - 1
    return ranks


def _i2t_ranks(text_emb: np.ndarray, image_emb: np.ndarray, query_image: np.ndarray) -> np.ndarray:
    """For each image with captions, how many OTHER images' captions score at least as high as
    its best caption; images without captions are left out."""
    ranks = []
    queried = np.unique(query_image)
    for start in range(0, len(queried), 512):
        images = queried[start : start + 512]
        sims = image_emb[images] @ text_emb.T  # (chunk, Q)
        own = query_image[None, :] == images[:, None]
        best = np.where(own, sims, -np.inf).max(axis=1)
        ranks.append(((sims >= best[:, None]) & ~own).sum(axis=1))
    return np.concatenate(ranks) if ranks else np.empty(0, dtype=np.int64)


def retrieval_recalls(
    text_emb: np.ndarray,
    image_emb: np.ndarray,
    query_image: np.ndarray,
    ks: Sequence[int] = (1, 5, 10),
) -> dict:
    """Recall@K both ways: keys t2i_r{k} and i2t_r{k}, fractions in [0, 1].

    text_emb (Q, D) and image_emb (N, D) are L2-normalised; query_image[q] is the row of
    image_emb that caption q describes.
    """
    text_emb = np.asarray(text_emb, dtype=np.float32)
    image_emb = np.asarray(image_emb, dtype=np.float32)
    query_image = np.asarray(query_image, dtype=np.int64)
    if len(text_emb) == 0 or len(image_emb) == 0:
        raise ValueError("retrieval_recalls needs at least one query and one image")
    if query_image.shape != (len(text_emb),):
        raise ValueError(f"query_image must have one entry per query ({len(text_emb)})")
    if query_image.min() < 0 or query_image.max() >= len(image_emb):
        raise ValueError("query_image holds an index outside image_emb")
    t2i = _t2i_ranks(text_emb, image_emb, query_image)
    i2t = _i2t_ranks(text_emb, image_emb, query_image)
    out = {}
    for k in ks:
        out[f"t2i_r{k}"] = float((t2i < k).mean())
    for k in ks:
        out[f"i2t_r{k}"] = float((i2t < k).mean())
    return out


def caption_scores(candidates: dict[str, str], references: dict[str, list[str]]) -> dict:
    """Corpus BLEU-4 and CIDEr-D of one generated caption per key against its references.

    Keys of `candidates` without references (or with only empty ones) are skipped; the
    document frequencies of CIDEr-D come from the references of the keys scored.
    """
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider

    res, gts = {}, {}
    for key, caption in candidates.items():
        refs = [tokenize(r) for r in references.get(key, [])]
        refs = [r for r in refs if r]
        if refs:
            res[key] = [tokenize(caption or "")]
            gts[key] = refs
    if not res:
        raise ValueError("caption_scores needs at least one candidate with a reference")
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    cider, _ = Cider().compute_score(gts, res)
    return {"bleu4": float(bleu[3]), "cider": float(cider)}
