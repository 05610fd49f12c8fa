"""One generate batch for several prompts per image, with each image through the model's image
processor once: the processor is called once per prompt over the same images, its image half
runs on the first call only (`image_processor_once`), and the per-prompt batches are merged into
one, left-padded (`merge_batches`).

Why not one processor call over (image, prompt) pairs: that normalises (and, for Qwen2-VL or
Idefics3, resizes and tiles) every image once per prompt. Why not family-specific code: the
processor alone knows how many image tokens an image becomes; this keeps that in its hands.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator

import torch


class _FirstCall:
    """Stands in for a processor's image processor: runs it on the first call, returns a copy of
    that output on every later one (a processor may pop keys from what it gets)."""

    def __init__(self, inner):
        self.inner = inner
        self.calls = 0
        self._out = None

    def __call__(self, *args, **kwargs):
        if self._out is None:
            self.calls += 1
            self._out = self.inner(*args, **kwargs)
        return copy.copy(self._out)

    def __getattr__(self, name: str):
        return getattr(self.inner, name)


@contextlib.contextmanager
def image_processor_once(processor) -> Iterator[_FirstCall]:
    """Within the block, every processor call reuses the first call's image outputs: only for
    calls over the very same images."""
    inner = processor.image_processor
    proxy = _FirstCall(inner)
    processor.image_processor = proxy
    try:
        yield proxy
    finally:
        processor.image_processor = inner


def merge_batches(parts: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Processor batches (same images, one prompt each) to one: text tensors (the (batch,
    length) ones: ids, masks, token types) left-padded to the longest, then every tensor
    concatenated along its first axis, in the order given."""
    length = max(p["input_ids"].shape[1] for p in parts)
    merged = {}
    for key in parts[0]:
        tensors = []
        for part in parts:
            tensor = part[key]
            if _is_text(key, tensor, part["input_ids"]):
                fill = pad_id if key == "input_ids" else 0
                pad = length - tensor.shape[1]
                tensor = torch.nn.functional.pad(tensor, (pad, 0), value=fill) if pad else tensor
            tensors.append(tensor)
        merged[key] = torch.cat(tensors)
    return merged


def _is_text(key: str, tensor: torch.Tensor, ids: torch.Tensor) -> bool:
    return "pixel" not in key and tensor.dim() == 2 and tensor.shape == ids.shape
