"""An image classifier as a score: `--score nsfw=ORG/MODEL:nsfw` keeps the probability of one
label of any `AutoModelForImageClassification` checkpoint (an NSFW or watermark detector, ...),
from the hub or a local directory.

Its pixels are prepared in the decode threads like the hub captioners' and embedders'
(vlpipe.models.hf_pixels: uint8 resize/crop per image, normalisation per batch on the device);
the probability is a softmax over the labels, or a sigmoid for a multi-label checkpoint.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import torch

from vlpipe.errors import VlpipeError
from vlpipe.models.score_base import Scorer, ScoreSpec


def _label_index(spec: ScoreSpec, config) -> int:
    labels = {str(v): int(k) for k, v in (config.id2label or {}).items()}
    if spec.label not in labels:
        known = ", ".join(sorted(labels)) or "none"
        raise VlpipeError(
            f"--score {spec.text}: the model has no label {spec.label!r} (its labels: {known})"
        )
    return labels[spec.label]


def describe(spec: ScoreSpec, embedder_dim: int) -> dict:
    """At planning, from the config and image processor only: the label exists, the model is
    an image classifier."""
    from transformers import AutoModelForImageClassification

    from vlpipe.models.hf_load import load_config
    from vlpipe.models.hf_pixels import pixel_recipe

    location, config = load_config(spec.source)
    mapping = AutoModelForImageClassification._model_mapping
    if type(config) not in mapping:
        raise VlpipeError(
            f"--score {spec.text}: {spec.source} ({config.model_type}) is not an image classifier"
        )
    index = _label_index(spec, config)
    recipe = pixel_recipe(spec.source, location)
    blob = json.dumps(
        {"config": config.to_dict(), "pixels": recipe.describe()}, sort_keys=True, default=str
    )
    return {
        "kind": "classifier",
        "source": spec.source,
        "label": spec.label,
        "label_index": index,
        "family": config.model_type,
        "image_size": recipe.image_size,
        "fingerprint": hashlib.sha1(blob.encode()).hexdigest()[:16],
    }


class ClassifierScorer(Scorer):
    needs_pixels = True

    def __init__(self, spec: ScoreSpec, device: str = "auto", precision: str = "auto"):
        from transformers import AutoModelForImageClassification

        from vlpipe.models.base import resolve_device, resolve_dtype
        from vlpipe.models.hf_load import from_pretrained, load_config, place
        from vlpipe.models.hf_pixels import pixel_recipe

        self.spec = spec
        location, config = load_config(spec.source)
        self.index = _label_index(spec, config)
        self.multi_label = config.problem_type == "multi_label_classification"
        self.recipe = pixel_recipe(spec.source, location)
        self.image_size = self.recipe.image_size
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(self.device, precision)
        model = from_pretrained(
            spec.source, AutoModelForImageClassification.from_pretrained, location
        )
        self.model = place(model, self.device, self.dtype)

    def preprocess(self, image) -> torch.Tensor:
        return self.recipe.to_uint8(image)

    def score(self, pixels, embeddings: np.ndarray | None) -> np.ndarray:
        x = self.recipe.normalize(pixels, self.device, self.dtype)
        with torch.inference_mode():
            logits = self.model(pixel_values=x).logits.float()
        probs = torch.sigmoid(logits) if self.multi_label else torch.softmax(logits, dim=-1)
        return probs[:, self.index].cpu().numpy().astype(np.float32)


def load(spec: ScoreSpec, device: str = "auto", precision: str = "auto") -> ClassifierScorer:
    return ClassifierScorer(spec, device, precision)
