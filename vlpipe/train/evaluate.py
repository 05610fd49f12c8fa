"""Stage 4 of `vlpipe train`: dev-split recall, BLEU-4 and CIDEr of the saved model, and the
default beam width they pick, recorded in the model's config.

Split out of run.py, which runs the stages in order.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
import torch

from vlpipe.eval.metrics import caption_scores, retrieval_recalls
from vlpipe.train.caption import tower_grids
from vlpipe.train.common import Features, TrainOptions, fmt
from vlpipe.train.data import Corpus


def evaluate(
    model_dir: str,
    corpus: Corpus,
    dev_idx: list[int],
    feats: Features,
    opts: TrainOptions,
    log: Callable[[str], None],
    select_idx: list[int] | None = None,
) -> dict:
    """Dev metrics of the saved model (fp16 weights as shipped), from the cached tower features.
    The default beam width is the one with the best CIDEr on `select_idx` (train images held
    out from training), never on dev: dev is measured, not tuned on."""
    from vlpipe.models.mini.model import MiniModel

    model = MiniModel.load(model_dir, device="cpu", precision="fp32")
    tower = model.tower()
    best_beams = _select_beams(model, tower, corpus, select_idx, feats, opts, log)
    grids = tower_grids(tower, opts.tail_stage, feats.grid_in[dev_idx]).float()
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
    by_beam = _captions_by_beam(model, grids, refs, opts.beams, "dev", log)
    best_beams = best_beams or max(by_beam, key=lambda b: by_beam[b]["cider"])
    metrics.update(by_beam[best_beams])
    metrics.update(
        num_beams=best_beams,
        n_images=len(dev_idx),
        by_beams={str(b): s for b, s in by_beam.items()},
    )
    log(f"dev ({len(dev_idx)} images): {fmt(metrics)}")
    return metrics


def _select_beams(model, tower, corpus, select_idx, feats, opts, log) -> int | None:
    """The beam width with the best CIDEr on the held-out train images (None without them)."""
    if not select_idx or len(opts.beams) == 1:
        return opts.beams[0] if len(opts.beams) == 1 else None
    grids = tower_grids(tower, opts.tail_stage, feats.grid_in[select_idx]).float()
    refs = {str(r): corpus.captions[i] for r, i in enumerate(select_idx)}
    scores = _captions_by_beam(model, grids, refs, opts.beams, "held-out train", log)
    return max(scores, key=lambda b: scores[b]["cider"])


def _captions_by_beam(model, grids, refs: dict, beams: list[int], what: str, log) -> dict:
    by_beam = {}
    for width in beams:
        model.num_beams = width
        out = []
        for s in range(0, len(grids), 100):
            out += model.captions_from_grid(grids[s : s + 100])
        by_beam[width] = caption_scores({str(r): c for r, c in enumerate(out)}, refs)
        log(f"{what} captions, beams {width}: {fmt(by_beam[width])}; e.g. {out[0]!r}")
    return by_beam


def record_metrics(model_dir: str, metrics: dict) -> None:
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
