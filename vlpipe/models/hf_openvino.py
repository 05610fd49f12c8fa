"""A hub embedder's image tower (CLIP, SigLIP) as a compiled OpenVINO graph on CPU.

The full-size CLIP ViT-B/32 tower measured several times faster through OpenVINO than in eager
PyTorch on the same batches (docs/precision.md), most of it from bf16 on CPUs that have it. The
graph is converted from the fp32 tower on first use and cached on disk like vlpipe-mini's
(vlpipe.models.openvino_graph), keyed by the embedder's fingerprint (config, preprocessing and a
sample of the weight files' bytes), so other weights under the same name get a new graph.

Which families run here: vlpipe.models.backends.OPENVINO_HUB_EMBEDDERS.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch


class ImageEmbeds(torch.nn.Module):
    """pixel_values -> the tower's embedding field, the single-tensor form a converter takes."""

    def __init__(self, tower: torch.nn.Module, field: str):
        super().__init__()
        self.tower, self.field = tower, field

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return getattr(self.tower(pixel_values=pixel_values), self.field)


def compile_image_tower(
    build_tower: Callable[[], torch.nn.Module],
    field: str,
    key: str,
    height_width: tuple[int, int],
    precision: str,
) -> Callable[[np.ndarray], np.ndarray]:
    """The tower's `field` output as an OpenVINO call on normalised float32 NCHW batches.
    `build_tower` loads the fp32 torch tower; it runs only when the graph is not cached yet."""
    from vlpipe.models.openvino_graph import compile_module

    return compile_module(
        lambda: ImageEmbeds(build_tower(), field),
        torch.zeros(2, 3, *height_width),
        f"{key}-image{height_width[0]}x{height_width[1]}",
        precision,
    )
