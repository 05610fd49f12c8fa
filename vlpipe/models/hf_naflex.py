"""SigLIP 2's NaFlex image preprocessing for vlpipe.models.hf: variable resolution, fixed shape.

NaFlex keeps each image's aspect ratio: the checkpoint's processor resizes it to the largest
patch grid of at most `max_num_patches` patches and cuts it into patches, padded to
`max_num_patches` rows. The pipeline stacks preprocessed images with torch.stack, so one image
travels as one uint8 tensor of fixed shape (max_num_patches + 1, patch_dim): row 0 holds the
grid's height and width (two bytes each), the other rows the patches in the processor's order.
The batched call unpacks it into the model's pixel_values, pixel_attention_mask and spatial_shapes,
normalising on the device as the processor would (padding rows stay zero, as the processor's do).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from vlpipe.errors import ModelLoadError


@dataclass(frozen=True)
class NaflexRecipe:
    """A Siglip2 image processor's settings, split into a CPU half (uint8) and a device half."""

    processor: object  # the checkpoint's own image processor, which resizes and patches
    patch_size: int
    max_num_patches: int
    scale: float | None
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None

    @classmethod
    def from_processor(cls, processor, name: str) -> NaflexRecipe:
        if not getattr(processor, "do_resize", True):
            raise ModelLoadError(
                f"cannot load model {name!r}: its NaFlex image processor does not resize"
            )
        normalize = getattr(processor, "do_normalize", True)
        return cls(
            processor=processor,
            patch_size=int(processor.patch_size),
            max_num_patches=int(processor.max_num_patches),
            scale=processor.rescale_factor if getattr(processor, "do_rescale", True) else None,
            mean=tuple(processor.image_mean) if normalize else None,
            std=tuple(processor.image_std) if normalize else None,
        )

    @property
    def image_size(self) -> int:
        """The side of the largest square grid: no image needs a longer shortest side."""
        return self.patch_size * math.isqrt(self.max_num_patches)

    def to_uint8(self, image: Image.Image) -> torch.Tensor:
        """One image to (max_num_patches + 1, patch_dim) uint8: a grid header, then patches."""
        image = image if image.mode == "RGB" else image.convert("RGB")
        out = self.processor(
            [image], do_rescale=False, do_normalize=False, return_tensors="pt"
        )  # resized and patched only: still 0..255
        patches = out["pixel_values"][0].round().clamp(0, 255).to(torch.uint8)
        rows, cols = (int(v) for v in out["spatial_shapes"][0])
        header = torch.zeros((1, patches.shape[1]), dtype=torch.uint8)
        header[0, :4] = torch.tensor([rows >> 8, rows & 255, cols >> 8, cols & 255])
        return torch.cat([header, patches])

    def model_inputs(self, pixels: torch.Tensor, device: torch.device, dtype: torch.dtype) -> dict:
        """A stacked uint8 batch to the Siglip2 vision tower's keyword arguments."""
        header = pixels[:, 0, :4].to(torch.int64)
        rows, cols = header[:, 0] * 256 + header[:, 1], header[:, 2] * 256 + header[:, 3]
        shapes = torch.stack([rows, cols], 1)
        lengths = shapes[:, 0] * shapes[:, 1]
        mask = torch.arange(self.max_num_patches)[None, :] < lengths[:, None]
        a, b = self._affine(pixels.shape[2])
        x = pixels[:, 1:].to(device, non_blocking=True).to(torch.float32)
        x = x.mul_(a.to(device)).add_(b.to(device)).mul_(mask[..., None].to(device))
        return {
            "pixel_values": x.to(dtype),
            "pixel_attention_mask": mask.to(device=device, dtype=torch.int32),
            "spatial_shapes": shapes.to(device),
        }

    def _affine(self, patch_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
        """((x * scale) - mean) / std as x * a + b, per element of a patch (channels last)."""
        scale = self.scale if self.scale is not None else 1.0
        mean = np.array(self.mean or (0.0, 0.0, 0.0), dtype=np.float64)
        std = np.array(self.std or (1.0, 1.0, 1.0), dtype=np.float64)
        channel = np.arange(patch_dim) % len(mean)
        a, b = scale / std[channel], -mean[channel] / std[channel]
        return torch.from_numpy(a).float(), torch.from_numpy(b).float()

    def describe(self) -> dict:
        fields = ("patch_size", "max_num_patches", "scale", "mean", "std")
        described = {k: getattr(self, k) for k in fields if getattr(self, k) is not None}
        described["resample"] = str(getattr(self.processor, "resample", ""))
        return {"naflex": described}


def is_naflex(processor) -> bool:
    return hasattr(processor, "max_num_patches") and hasattr(processor, "patch_size")
