"""A hub embedder's image tower (CLIP, SigLIP), or BLIP's vision encoder, as a compiled
OpenVINO graph on CPU.

In a rough side-by-side on the full-size CLIP ViT-B/32 tower (same batches, one thread, a busy
machine) OpenVINO ran about 1.4x eager PyTorch in fp32 and about 3x in bf16 where the CPU has it,
against about 2.3x for a bf16 copy of the torch tower; bench/modes.py times it end to end. The
graph is converted from the fp32 tower on first use and cached on disk like vlpipe-mini's
(vlpipe.models.openvino_graph), keyed by the embedder's fingerprint (config, preprocessing and a
sample of the weight files' bytes), so other weights under the same name get a new graph.

BLIP's vision encoder is swapped inside the loaded model (CompiledVision), so `generate` runs
unchanged with its text decoder in torch. Which families run here:
vlpipe.models.backends.OPENVINO_HUB_EMBEDDERS and OPENVINO_HUB_CAPTIONERS.
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
    dtype: torch.dtype,
) -> Callable[[np.ndarray], np.ndarray]:
    """The tower's `field` output as an OpenVINO call on normalised float32 NCHW batches.
    `build_tower` loads the fp32 torch tower; it runs only when the graph is not cached yet."""
    from vlpipe.models.openvino_graph import compile_module

    return compile_module(
        lambda: ImageEmbeds(build_tower(), field),
        torch.zeros(2, 3, *height_width),
        f"{key}-image{height_width[0]}x{height_width[1]}",
        dtype,
    )


class LastHiddenState(torch.nn.Module):
    """A captioner's vision encoder as pixel_values -> patch embeddings, for the converter."""

    def __init__(self, vision: torch.nn.Module):
        super().__init__()
        self.vision = vision

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.vision(pixel_values=pixel_values)[0]


class CompiledVision(torch.nn.Module):
    """Stands in for BLIP's `vision_model` inside `generate`: runs the compiled graph and returns
    the tuple generate reads (`outputs[0]`, the patch embeddings) in the decoder's dtype."""

    def __init__(self, call: Callable[[np.ndarray], np.ndarray], dtype: torch.dtype):
        super().__init__()
        self.call, self.dtype_out = call, dtype

    def forward(self, pixel_values: torch.Tensor, **_: object) -> tuple[torch.Tensor]:
        out = self.call(pixel_values.float().cpu().numpy())
        return (torch.from_numpy(out).to(self.dtype_out),)


def compile_captioner_vision(
    model: torch.nn.Module, key: str, height_width: tuple[int, int], dtype: torch.dtype
) -> None:
    """Swap a loaded BLIP's `vision_model` for its OpenVINO graph (converted from the model's
    own weights, fp32, on first use; cached by `key`). The torch encoder is dropped."""
    from vlpipe.models.openvino_graph import compile_module

    vision = model.vision_model
    call = compile_module(
        lambda: LastHiddenState(vision),
        torch.zeros(2, 3, *height_width),
        f"{key}-captioner-vision{height_width[0]}x{height_width[1]}",
        dtype,
    )
    model.vision_model = CompiledVision(call, next(model.text_decoder.parameters()).dtype)
