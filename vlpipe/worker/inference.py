"""Captions, image embeddings and text scores for a batch of images: the models' side of a run.

`ImageInference` loads the models once per process and runs one batch; vlpipe's own pipeline
drives it from a shard-level DoFn (`worker/shard.py` says why), and `VlpipeModelHandler`
(vlpipe.worker.handlers) is the same class as a Beam ModelHandler for a user's `RunInference`,
so both paths share one implementation of batching and inference. Beam's ML package is imported
only there: its import (scipy.optimize among others) costs about 0.3 s of CPU that a `vlpipe
run` does not need.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from vlpipe.images.blur import blur_boxes
from vlpipe.images.decode import DEFAULT_MAX_PIXELS, Filters, decode_image
from vlpipe.images.fingerprints import phash, sha256
from vlpipe.images.metadata import PhotoFacts, read_facts
from vlpipe.images.quality import quality
from vlpipe.images.thumbnails import make_thumbnail
from vlpipe.models.base import CaptionEmbedder, Captioner, Embedder
from vlpipe.models.faces import FaceDetector
from vlpipe.models.prompting import Prompting
from vlpipe.models.score_base import Scorer
from vlpipe.worker.prompted import captions_and_columns

__all__ = ["ImageInference", "ImageResult", "Models", "PreparedImage", "prepare_image"]


@dataclass
class Models:
    """The loaded pair; `captioner is embedder` for a fused model like vlpipe-mini. Either may
    be None (an embeddings-only or a captions-only run), not both."""

    captioner: Captioner | None
    embedder: Embedder | None
    scorers: list[Scorer] = field(default_factory=list)  # --score, in the order given
    faces: FaceDetector | None = None  # --detect-faces

    @property
    def fused(self) -> bool:
        return self.captioner is self.embedder and isinstance(self.captioner, CaptionEmbedder)

    @property
    def image_size(self) -> int:
        models = [m for m in (self.captioner, self.embedder) if m is not None]
        return max(m.image_size for m in [*models, *self.scorers])


@dataclass
class PreparedImage:
    """One decoded image, preprocessed for each model (once, if they are the same model)."""

    image_id: str
    width: int
    height: int
    caption_pixels: torch.Tensor | None
    embed_pixels: torch.Tensor | None
    text: str | None = None
    orig_width: int = 0
    orig_height: int = 0
    nbytes: int = 0
    format: str = ""
    phash: int | None = None  # of the decoded image (vlpipe.images.fingerprints)
    sha256: str | None = None  # of the bytes read
    thumbnail: bytes | None = None  # a small JPEG, when the run stores them
    raw: bytes | None = None  # the bytes as read, when the run also writes WebDataset tars
    quality: dict | None = None  # the quality signals' columns (vlpipe.images.quality)
    score_pixels: dict[str, torch.Tensor] | None = None  # per scorer that reads the image
    facts: PhotoFacts | None = None  # what the file's metadata says (location, camera, time)
    face_boxes: list | None = None  # normalised face boxes, when the run detects faces


@dataclass
class ImageResult:
    image_id: str
    caption: str | None
    embedding: np.ndarray | None  # (dim,) float32, L2-normalised
    text_score: float | None
    columns: dict | None = None  # --ask answers, --candidates' caption_score


def prepare_image(
    image_id: str,
    data: bytes,
    models: Models,
    text: str | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    filters: Filters | None = None,
    thumbnail_px: int = 0,
    keep_raw: bool = False,
    *,
    blur_faces: bool = False,
) -> PreparedImage:
    """Decode once, at the size the models need, and preprocess for each. Raises DecodeError,
    or FilterError for an image the filters skip (known from its header, before decoding).
    Faces are looked for (`models.faces`) on the same decoded image; `blur_faces` blurs them in
    the stored thumbnail."""
    decoded = decode_image(data, models.image_size, max_pixels, filters)
    cap = models.captioner.preprocess(decoded.image) if models.captioner else None
    if models.embedder is None:
        emb = None
    else:
        emb = cap if models.fused else models.embedder.preprocess(decoded.image)
    boxes = models.faces.detect(decoded.image) if models.faces is not None else None
    thumb = None
    if thumbnail_px:
        shown = blur_boxes(decoded.image, boxes) if blur_faces and boxes else decoded.image
        thumb = make_thumbnail(shown, thumbnail_px)
    signals = quality(decoded.image)
    score_pixels = {s.spec.name: s.preprocess(decoded.image) for s in models.scorers
                    if s.needs_pixels}  # fmt: skip
    return PreparedImage(
        image_id, decoded.width, decoded.height, cap, emb, text, decoded.orig_width,
        decoded.orig_height, len(data), decoded.format, phash(decoded.image, signals.inner),
        sha256(data), thumb, data if keep_raw else None, signals.columns(), score_pixels,
        read_facts(data), boxes,
    )  # fmt: skip


_LOADED: dict[tuple, Models] = {}
_LOAD_LOCK = threading.Lock()


class ImageInference:
    """Loads the captioner and embedder once per process; one forward pass per batch."""

    def __init__(
        self,
        captioner: str = "mini",
        embedder: str = "mini",
        device: str = "auto",
        precision: str = "auto",
        max_caption_tokens: int = 30,
        max_batch_size: int = 32,
        prompting: Prompting | None = None,
        scores: tuple[str, ...] = (),
        backend: str = "torch",
        detect_faces: bool = False,
    ):
        self.backend = backend
        self.prompting = prompting or Prompting()
        self.detect_faces = detect_faces
        self.captioner_name = captioner
        self.embedder_name = embedder
        self.device = device
        self.precision = precision
        self.max_caption_tokens = max_caption_tokens
        self.max_batch_size = max_batch_size
        self.scores = tuple(scores)  # the --score NAME=SPEC texts

    @classmethod
    def for_run(cls, config) -> ImageInference:
        """The handler of a `vlpipe run` (a vlpipe.pipeline.options.RunConfig). ProcessShard
        fills batches to `batch_size`, a part's last batch holding what is left; RunInference
        users who want a smallest batch pass VlpipeModelHandler `min_batch_size` themselves."""
        return cls(
            captioner=config.captioner,
            embedder=config.embedder,
            device=config.device,
            precision=config.precision,
            backend=config.backend,
            max_caption_tokens=config.max_caption_tokens,
            max_batch_size=config.batch_size,
            prompting=config.prompting,
            scores=config.scores,
            detect_faces=config.detect_faces,
        )

    def on_device(self, device: str) -> ImageInference:
        """The same handler on another device (a worker's own GPU)."""
        if device == self.device:
            return self
        clone = copy.copy(self)
        clone.device = device
        return clone

    def load_model(self) -> Models:
        """Once per process: every DoFn instance, thread and bundle shares the loaded models."""
        key = (self.captioner_name, self.embedder_name, self.device, self.precision,
               self.prompting, self.backend)  # fmt: skip
        with _LOAD_LOCK:
            if (*key, self.scores, self.detect_faces) not in _LOADED:
                from vlpipe.models.registry import load_models
                from vlpipe.models.scorers import load_scorers, parse_score

                specs = [parse_score(s) for s in self.scores]
                scorers = load_scorers(specs, self.device, self.precision)
                faces = FaceDetector() if self.detect_faces else None
                loaded = Models(*load_models(*key), scorers, faces)
                _LOADED[(*key, self.scores, self.detect_faces)] = loaded
            return _LOADED[(*key, self.scores, self.detect_faces)]

    def run_inference(
        self,
        batch: Sequence[PreparedImage],
        model: Models,
        inference_args: dict[str, Any] | None = None,
    ) -> Iterable[ImageResult]:
        captions, embeddings, columns = self._caption_and_embed(batch, model)
        if model.embedder is None:
            embeddings, scores = [None] * len(batch), [None] * len(batch)
        else:
            scores = _text_scores(batch, embeddings, model.embedder)
        learned = _learned_scores(batch, embeddings, model.scorers)
        return [
            ImageResult(
                p.image_id, c, e, s, {**x, **{k: float(v[i]) for k, v in learned.items()}} or None
            )
            for i, (p, c, e, s, x) in enumerate(
                zip(batch, captions, embeddings, scores, columns, strict=True)
            )
        ]

    def _caption_and_embed(
        self, batch: Sequence[PreparedImage], model: Models
    ) -> tuple[list[str | None], np.ndarray | None, list[dict]]:
        """One image-tower pass for a fused model; only the model a run asked for runs."""
        columns: list[dict] = [{} for _ in batch]
        if model.fused:
            pixels = torch.stack([p.caption_pixels for p in batch])
            return (*model.captioner.caption_and_embed(pixels, self.max_caption_tokens), columns)
        captions: list[str | None] = [None] * len(batch)
        embeddings = None
        if model.embedder is not None:
            embeddings = model.embedder.embed_images(torch.stack([p.embed_pixels for p in batch]))
        if model.captioner is not None:
            collate = getattr(model.captioner, "collate", torch.stack)  # a duck-typed one stacks
            pixels = collate([p.caption_pixels for p in batch])
            captions, columns = captions_and_columns(
                model.captioner, pixels, self.prompting, self.max_caption_tokens,
                model.embedder, embeddings,
            )  # fmt: skip
        return captions, embeddings, columns


def _learned_scores(
    batch: Sequence[PreparedImage], embeddings, scorers: list[Scorer]
) -> dict[str, np.ndarray]:
    """--score columns of one batch: heads read its embeddings, classifiers its pixels."""
    out = {}
    for scorer in scorers:
        name = scorer.spec.name
        pixels = torch.stack([p.score_pixels[name] for p in batch]) if scorer.needs_pixels else None
        out[name] = scorer.score(pixels, None if pixels is not None else np.asarray(embeddings))
    return out


def _text_scores(
    batch: Sequence[PreparedImage], embeddings: np.ndarray, embedder: Embedder
) -> list[float | None]:
    """cosine(image, given text) for the images whose source has text; one text-tower call."""
    with_text = [i for i, p in enumerate(batch) if p.text]
    scores: list[float | None] = [None] * len(batch)
    if with_text:
        text_emb = embedder.embed_texts([batch[i].text for i in with_text])
        for row, i in enumerate(with_text):
            scores[i] = float(np.dot(embeddings[i], text_emb[row]))
    return scores
