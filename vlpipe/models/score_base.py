"""What every scorer kind shares (vlpipe.models.scorers has the table of kinds)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ScoreSpec:
    """One parsed `--score NAME=SPEC`."""

    name: str  # the column
    kind: str  # a key of KINDS
    source: str  # a weights file, or a model directory / hub id
    label: str | None = None  # the classifier's label whose probability is kept

    @property
    def text(self) -> str:
        return f"{self.name}={self.source}" + (f":{self.label}" if self.label else "")


class Scorer(ABC):
    """A loaded scorer. `needs_pixels`: its input is the image (preprocessed in the decode
    threads), else the batch's embeddings."""

    spec: ScoreSpec
    needs_pixels: bool = False
    image_size: int = 0  # the shortest side its preprocessing needs (0: none)

    def preprocess(self, image):
        """One RGB image to the tensor `score` takes (only when needs_pixels)."""
        return None

    @abstractmethod
    def score(self, pixels, embeddings: np.ndarray | None) -> np.ndarray:
        """(N,) float32 scores of a batch: stacked pixels or (N, dim) embeddings."""
