"""One generate batch for several prompts per image, with each image through the model's image
processor once: the processor is called once per prompt over the same images, its image half
runs on the first call only (`image_processor_once`), and the per-prompt batches are merged into
one, padded as the tokenizer pads (`merge_batches`).

Why not one processor call over (image, prompt) pairs: that normalises (and, for Qwen2-VL or
Idefics3, resizes and tiles) every image once per prompt. Why not family-specific code: the
processor alone knows how many image tokens an image becomes; this keeps that in its hands.
"""

from __future__ import annotations

import contextlib
import copy
import functools
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


def merge_batches(parts: list[dict], pad_id: int, side: str = "left") -> dict[str, torch.Tensor]:
    """Processor batches (same images, one prompt each) to one: text tensors (the (batch,
    length) ones: ids, masks, token types) padded on `side` to the longest (left for a decoder
    that generates after the text, right for an encoder-decoder's encoder input), then every
    tensor concatenated along its first axis, in the order given."""
    length = max(p["input_ids"].shape[1] for p in parts)
    merged = {}
    for key in parts[0]:
        tensors = []
        for part in parts:
            tensor = part[key]
            if _is_text(key, tensor, part["input_ids"]):
                fill = pad_id if key == "input_ids" else 0
                pad = length - tensor.shape[1]
                where = (pad, 0) if side == "left" else (0, pad)
                tensor = torch.nn.functional.pad(tensor, where, value=fill) if pad else tensor
            tensors.append(tensor)
        merged[key] = torch.cat(tensors)
    return merged


def _is_text(key: str, tensor: torch.Tensor, ids: torch.Tensor) -> bool:
    return "pixel" not in key and tensor.dim() == 2 and tensor.shape == ids.shape


#: families whose vision pass is shared across prompts (checked with tiny models: the same
#: answers, one vision pass per image); in transformers 5 their `model.model.get_image_features`
#: returns the image features as `pooler_output`, one entry or row block per image, in order
SHARED_VISION = frozenset(
    {"llava", "llava_onevision", "qwen2_vl", "qwen2_5_vl", "idefics3", "paligemma", "florence2"}
)


@contextlib.contextmanager
def vision_once(model, copies: int) -> Iterator[bool]:
    """Within the block, a batch that holds `copies` identical copies of its images, one after
    the other (what `merge_batches` makes), runs the vision tower on the first copy only and
    hands the model its features `copies` times. Yields whether sharing is on (a family not in
    SHARED_VISION, or one loaded without `model.model`, encodes every copy)."""
    inner = getattr(model, "model", None)
    family = model.config.model_type
    if copies < 2 or family not in SHARED_VISION or not hasattr(inner, "get_image_features"):
        yield False
        return
    encode = inner.get_image_features

    @functools.wraps(encode)  # generate reads its signature to pick the image inputs
    def first_copy_only(*args, **kwargs):
        args = [_first(a, copies) for a in args]
        kwargs = {k: _first(v, copies) for k, v in kwargs.items()}
        out = encode(*args, **kwargs)
        out.pooler_output = _repeat(out.pooler_output, copies)
        return out

    inner.get_image_features = first_copy_only
    try:
        yield True
    finally:
        del inner.get_image_features  # back to the class's method


def _first(value, copies: int):
    """The first of `copies` equal blocks along the first axis of a per-image tensor."""
    if not torch.is_tensor(value) or value.dim() == 0 or value.shape[0] % copies:
        return value
    return value[: value.shape[0] // copies]


def _repeat(features, copies: int):
    if torch.is_tensor(features):
        return torch.cat([features] * copies)
    return type(features)(list(features) * copies)
