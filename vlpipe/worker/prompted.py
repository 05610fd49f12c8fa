"""The captioner's share of a batch when a run asks more than one caption per image: answers to
`--ask` questions (one string column each) and `--candidates` re-ranked by the run's embedder
(LAION-COCO's recipe: generate several, keep the one closest to the image in the joint space).

Split from handlers.py, which calls `captions_and_columns` in place of a plain `caption` call.
"""

from __future__ import annotations

import numpy as np

from vlpipe.models.base import Captioner, Embedder
from vlpipe.models.prompting import CAPTION_SCORE, Prompting


def captions_and_columns(
    captioner: Captioner,
    pixels,
    prompting: Prompting,
    max_tokens: int,
    embedder: Embedder | None = None,
    embeddings: np.ndarray | None = None,
) -> tuple[list[str], list[dict]]:
    """One caption per image and the extra columns of each row ({} when none are asked)."""
    n = len(pixels)
    columns: list[dict] = [{} for _ in range(n)]
    captions: list[str] | None = None
    if prompting.candidates > 1:
        options = captioner.candidates(pixels, prompting.candidates, max_tokens)
        captions, scores = best_candidates(options, embeddings, embedder)
        for row, score in zip(columns, scores, strict=True):
            row[CAPTION_SCORE] = score
    if not prompting.asks:
        return captions if captions is not None else captioner.caption(pixels, max_tokens), columns
    questions = [q for _, q in prompting.asks]
    prompts = questions if captions is not None else [captioner.prompt, *questions]
    replies = captioner.answers(pixels, prompts, max_tokens)
    if captions is None:
        captions, replies = [r[0] for r in replies], [r[1:] for r in replies]
    for row, answers in zip(columns, replies, strict=True):
        row.update(zip((name for name, _ in prompting.asks), answers, strict=True))
    return captions, columns


def best_candidates(
    options: list[list[str]], embeddings: np.ndarray, embedder: Embedder
) -> tuple[list[str], list[float]]:
    """Per image, the candidate whose text embedding is closest to the image's (one text-tower
    call for the whole batch), and that cosine."""
    flat = [text for texts in options for text in texts]
    vectors = embedder.embed_texts(flat)
    captions, scores, start = [], [], 0
    for i, texts in enumerate(options):
        sims = vectors[start : start + len(texts)] @ embeddings[i]
        best = int(np.argmax(sims))
        captions.append(texts[best])
        scores.append(float(sims[best]))
        start += len(texts)
    return captions, scores
