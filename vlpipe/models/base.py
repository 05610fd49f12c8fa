"""The model interface the pipeline, the index and search share.

A Captioner turns images into captions; an Embedder maps images and texts into one L2-normalised
joint space. One object may be both (vlpipe-mini): the pipeline then preprocesses once and calls
`caption_and_embed`, so captions and embeddings come from one forward pass of the image tower.

`preprocess` runs on CPU in the decode threads, one image at a time, and should return a small
tensor (uint8 CHW is ideal: 4x less to copy to a GPU); the batched methods move it to the device,
normalise it there and run under `torch.inference_mode`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np
import torch
from PIL import Image

from vlpipe.errors import VlpipeError
from vlpipe.models.precision import resolve_precision

__all__ = [
    "CaptionEmbedder",
    "Captioner",
    "Embedder",
    "l2_normalize",
    "resolve_device",
    "resolve_dtype",
]


def resolve_device(device: str = "auto") -> torch.device:
    """`auto` means CUDA when there is one, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as exc:
        raise VlpipeError(f"unknown device {device!r}: use auto, cpu or cuda[:N]") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise VlpipeError(f"device {device!r} asked for, but no CUDA GPU is available")
    return resolved


def resolve_dtype(
    device: torch.device, precision: str = "auto", bf16_measured: bool = False
) -> torch.dtype:
    """The torch dtype for `precision` on `device` (see vlpipe.models.precision for `auto`).
    A model family whose CPU bf16 speed and quality were measured says so (`bf16_measured`);
    the others stay fp32 on CPU under auto."""
    table = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    chosen = resolve_precision(device.type, precision, bf16_measured=bf16_measured)
    return table[chosen.name]


def l2_normalize(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)


class Captioner(ABC):
    """Batched image captioning; deterministic (greedy or beam search) by default."""

    name: str
    #: shortest side, in pixels, that `preprocess` needs; decode drafts JPEGs down to it
    image_size: int

    @abstractmethod
    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """One RGB image to the tensor the batched call takes (stacked with torch.stack)."""

    @abstractmethod
    def caption(self, pixels: torch.Tensor, max_tokens: int = 30) -> list[str]:
        """A batch of preprocessed images to one caption each."""

    def collate(self, items: list) -> torch.Tensor:
        """`preprocess` outputs to the batch `caption` takes (a prompted model takes a list)."""
        return torch.stack(items)

    def candidates(self, pixels, n: int, max_tokens: int = 30) -> list[list[str]]:
        """n captions per image, for re-ranking (`--candidates`)."""
        raise VlpipeError(f"{self.name} cannot generate caption candidates")

    @abstractmethod
    def describe(self) -> dict:
        """JSON-able name and config, recorded in the run's manifest."""


class Embedder(ABC):
    """Images and texts into one L2-normalised joint space.

    Implementations load each tower lazily, so search by text never loads the image tower.
    """

    name: str
    dim: int
    image_size: int

    @abstractmethod
    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """One RGB image to the tensor `embed_images` takes."""

    @abstractmethod
    def embed_images(self, pixels: torch.Tensor) -> np.ndarray:
        """(N, dim) float32, each row L2-normalised."""

    @abstractmethod
    def embed_texts(self, texts: list[str]) -> np.ndarray:
        """(N, dim) float32, each row L2-normalised."""

    @abstractmethod
    def describe(self) -> dict:
        """JSON-able name and config, recorded in the manifest and the index."""

    def load_image_tower(self) -> None:
        """Load now what `embed_images` would load at its first call (a worker does this in the
        background while its first batch decodes); nothing where nothing loads lazily."""
        return None

    def fingerprint(self) -> str:
        """Identity of the embedding space: an index refuses vectors from another one."""
        import hashlib
        import json

        blob = json.dumps(self.describe(), sort_keys=True, default=str)
        return hashlib.sha1(blob.encode()).hexdigest()[:16]


class CaptionEmbedder(Captioner, Embedder):
    """A fused model that captions and embeds from one pass over the image tower."""

    def caption_and_embed(
        self, pixels: torch.Tensor, max_tokens: int = 30
    ) -> tuple[list[str], np.ndarray]:
        return self.caption(pixels, max_tokens), self.embed_images(pixels)
