"""Image preprocessing for vlpipe.models.hf: PIL resize/crop per image on CPU (in the decode
threads, uint8), normalisation per batch on the model's device with the checkpoint's mean/std.

Split out of hf.py because it is the one part shared unchanged by captioners and embedders, and
it is what decode drafts JPEGs for (`PixelRecipe.image_size`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import torch
from PIL import Image

from vlpipe.errors import ModelLoadError
from vlpipe.models.hf_load import from_pretrained


def _size_field(size, key: str) -> int | None:
    """Read a size dict (transformers 4) or SizeDict (transformers 5)."""
    value = size.get(key) if isinstance(size, dict) else getattr(size, key, None)
    return int(value) if value else None


@dataclass(frozen=True)
class PixelRecipe:
    """A checkpoint's image preprocessing, split into a CPU half (uint8) and a device half."""

    square: tuple[int, int] | None  # (width, height) of a plain resize (BLIP, SigLIP, ViT)
    shortest_edge: int | None  # or: shortest side to this, keeping aspect (CLIP, GIT)
    crop: tuple[int, int] | None  # then a center crop to (width, height)
    resample: int
    scale: float | None
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None

    @classmethod
    def from_processor(cls, processor, name: str) -> PixelRecipe:
        size, crop = processor.size, getattr(processor, "crop_size", None)
        height, width = _size_field(size, "height"), _size_field(size, "width")
        shortest = _size_field(size, "shortest_edge")
        use_crop = bool(getattr(processor, "do_center_crop", False)) and crop is not None
        crop_wh = (_size_field(crop, "width"), _size_field(crop, "height")) if use_crop else None
        fixed = (height and width) or (shortest and crop_wh and all(crop_wh))
        if not getattr(processor, "do_resize", True) or not fixed:
            raise ModelLoadError(
                f"cannot load model {name!r}: its image processor ({type(processor).__name__}, "
                f"size {size}) does not give fixed-size images; vlpipe needs a resize to "
                "height/width or to a shortest edge plus a center crop"
            )
        normalize = getattr(processor, "do_normalize", True)
        return cls(
            square=(width, height) if height and width else None,
            shortest_edge=None if height and width else shortest,
            crop=crop_wh,
            resample=int(getattr(processor, "resample", Image.Resampling.BICUBIC)),
            scale=processor.rescale_factor if getattr(processor, "do_rescale", True) else None,
            mean=tuple(processor.image_mean) if normalize else None,
            std=tuple(processor.image_std) if normalize else None,
        )

    @property
    def image_size(self) -> int:
        """The shortest source side that needs no upscaling (what decode drafts JPEGs to)."""
        return self.shortest_edge or max(self.square)

    @property
    def height_width(self) -> tuple[int, int]:
        """(height, width) of the pixels it makes: the center crop's, else the plain resize's."""
        width, height = self.crop or self.square
        return height, width

    def to_uint8(self, image: Image.Image) -> torch.Tensor:
        """One image to a uint8 (3, H, W) tensor, resized and cropped like the processor does."""
        image = image if image.mode == "RGB" else image.convert("RGB")
        if self.square:
            image = image.resize(self.square, resample=self.resample)
        else:
            w, h = image.size
            short = self.shortest_edge
            new = (short, int(short * h / w)) if w <= h else (int(short * w / h), short)
            image = image.resize(new, resample=self.resample)
        if self.crop:
            w, h = image.size
            left, top = (w - self.crop[0]) // 2, (h - self.crop[1]) // 2
            image = image.crop((left, top, left + self.crop[0], top + self.crop[1]))
        return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).contiguous()

    def normalize(self, pixels: torch.Tensor, device: torch.device, dtype: torch.dtype):
        """A uint8 batch to the model's input on the device: ((x * scale) - mean) / std, folded
        into one in-place multiply-add per channel (x * a + b) in float32, then cast."""
        scale = self.scale if self.scale is not None else 1.0
        mean = torch.tensor(self.mean or (0.0, 0.0, 0.0), dtype=torch.float64)
        std = torch.tensor(self.std or (1.0, 1.0, 1.0), dtype=torch.float64)
        a, b = (scale / std).float().view(1, -1, 1, 1), (-mean / std).float().view(1, -1, 1, 1)
        x = pixels.to(device, non_blocking=True).to(torch.float32)
        return x.mul_(a.to(device)).add_(b.to(device)).to(dtype)

    def model_inputs(self, pixels: torch.Tensor, device: torch.device, dtype: torch.dtype) -> dict:
        """A uint8 batch to the vision tower's keyword arguments (NaflexRecipe's has three)."""
        return {"pixel_values": self.normalize(pixels, device, dtype)}

    def describe(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v is not None}


#: image processor classes whose saved preprocessor_config.json, when it spells out every field
#: PixelRecipe reads, says all there is to their resize / crop / normalise: such a recipe is read
#: from the JSON without transformers' image processing, whose import pulls in torchvision and
#: torch._dynamo (about 1.4 s of every run's start on a 2-core machine). Each name maps to the
#: fields that must be present: a missing one would take the class's default, so it falls back.
_PLAIN = ("do_resize", "size", "resample", "do_rescale", "rescale_factor", "do_normalize")
_NORM = ("image_mean", "image_std")
_CROP = ("do_center_crop", "crop_size")
PLAIN_PROCESSORS = {
    "CLIPImageProcessor": _PLAIN + _NORM + _CROP,
    "CLIPImageProcessorFast": _PLAIN + _NORM + _CROP,
    "SiglipImageProcessor": _PLAIN + _NORM,
    "SiglipImageProcessorFast": _PLAIN + _NORM,
    "BlipImageProcessor": _PLAIN + _NORM,
    "BlipImageProcessorFast": _PLAIN + _NORM,
    "ViTImageProcessor": _PLAIN + _NORM,
    "ViTImageProcessorFast": _PLAIN + _NORM,
}


def saved_recipe(name: str, location: str) -> PixelRecipe | None:
    """The recipe from a plain processor's saved JSON (PLAIN_PROCESSORS), or None where
    transformers must build the processor: another class, a missing field, a size given as a
    bare number (whose meaning depends on the class) or no readable file."""
    path = os.path.join(location, "preprocessor_config.json")
    try:
        with open(path, encoding="utf-8") as f:
            saved = json.load(f)
    except (OSError, ValueError):
        return None  # a hub id (not a folder) or an odd file: transformers reads it
    needed = (
        PLAIN_PROCESSORS.get(saved.get("image_processor_type")) if isinstance(saved, dict) else None
    )
    if needed is None or any(saved.get(k) is None for k in needed):
        return None
    if not all(isinstance(saved.get(k), dict) for k in ("size", "crop_size") if k in saved):
        return None
    return PixelRecipe.from_processor(SimpleNamespace(**saved), name)


def pixel_recipe(name: str, location: str):
    """The checkpoint's PixelRecipe, or a NaflexRecipe for SigLIP 2's variable resolution."""
    recipe = saved_recipe(name, location)
    if recipe is not None:
        return recipe
    from transformers import AutoImageProcessor

    from vlpipe.models.hf_naflex import NaflexRecipe, is_naflex

    processor = from_pretrained(name, AutoImageProcessor.from_pretrained, location)
    if is_naflex(processor):
        return NaflexRecipe.from_processor(processor, name)
    return PixelRecipe.from_processor(processor, name)
