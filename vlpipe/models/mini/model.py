"""MiniModel: vlpipe-mini behind the CaptionEmbedder interface.

A model directory holds `vlpipe_mini.json` (architecture, vocabulary, training record) and
`model.safetensors` (fp16): the fine-tuned tail of the image tower (`tower.*`), the joint heads
(`heads.*`) and the caption decoder (`decoder.*`). The frozen towers come from their PyPI packages.
Each tower is loaded on first use, so text search never loads the image tower and image
embedding never loads MiniLM.
"""

from __future__ import annotations

import json
import os
import threading

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from vlpipe.errors import VlpipeError
from vlpipe.models.backends import resolve_backend
from vlpipe.models.base import CaptionEmbedder, resolve_device, resolve_dtype
from vlpipe.models.mini import (
    CONFIG_NAME,
    SHIPPED_DIR,
    WEIGHTS_NAME,
    load_weights,
    quantize,
    tower_entry,
    weights_fingerprint,
)
from vlpipe.models.mini.efficientnet import (
    FEATURE_DIM,
    TOWERS,
    EfficientNetLite,
    check_tower,
    fuse_batchnorm,
    normalize_pixels,
)
from vlpipe.models.mini.fusion import CaptionDecoder, JointHeads, Vocab

__all__ = [
    "IMAGE_SIZE",
    "MiniModel",
    "TowerGrid",
    "build_parts",
    "load_mini",
    "preprocess_image",
    "save_model",
]

IMAGE_SIZE = 224  # Lite0's; a model's own is `MiniModel.image_size`
FORMAT_VERSION = 2  # 2: int8 weight matrices with per-row scales; 1: all fp16
READABLE_FORMATS = (1, 2)


def preprocess_image(image: Image.Image, side: int = IMAGE_SIZE) -> torch.Tensor:
    """RGB image to uint8 CHW side x side, resized without keeping the aspect ratio (as the
    Flickr8k training images were). torch's antialiased bicubic on uint8 is Pillow's filter,
    SIMD-vectorised: 1.7x faster than `Image.resize` here (bench/decode.py)."""
    if image.mode != "RGB":
        image = image.convert("RGB")
    pixels = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)
    if image.size == (side, side):
        return pixels.contiguous()
    size = (side, side)
    return F.interpolate(pixels[None], size=size, mode="bicubic", antialias=True)[0].contiguous()


def build_parts(config: dict) -> tuple[JointHeads, CaptionDecoder]:
    """Untrained heads and decoder shaped as `config` says."""
    h, d = config["heads"], config["decoder"]
    heads = JointHeads(FEATURE_DIM, 384, config["dim"], h["hidden"], h["dropout"])
    decoder = CaptionDecoder(
        len(config["vocab"]),
        FEATURE_DIM,
        d["d_model"],
        d["layers"],
        d["heads"],
        d["ff"],
        d["dropout"],
        d["max_len"],
        d.get("cells", 50),
    )
    return heads, decoder


def save_model(
    path: str, config: dict, tower_tail: dict, heads: JointHeads, decoder: CaptionDecoder
) -> None:
    """Write a model directory (int8 weight matrices with per-row scales, the rest fp16);
    `tower_tail` is the fine-tuned tower state."""
    from safetensors.numpy import save_file

    state = {
        f"tower.{k}": v for k, v in tower_tail.items() if not k.endswith("num_batches_tracked")
    }
    state.update({f"heads.{k}": v for k, v in heads.state_dict().items()})
    state.update({f"decoder.{k}": v for k, v in decoder.state_dict().items()})
    state = quantize({k: v.detach().float().cpu().numpy() for k, v in state.items()})
    os.makedirs(path, exist_ok=True)
    tmp = os.path.join(path, WEIGHTS_NAME + ".tmp")
    # np.require, not np.ascontiguousarray: that one turns 0-d tensors (logit_scale) into 1-d
    save_file({k: np.require(v, requirements="C") for k, v in state.items()}, tmp)
    os.replace(tmp, os.path.join(path, WEIGHTS_NAME))
    with open(os.path.join(path, CONFIG_NAME), "w") as f:
        json.dump({"format_version": FORMAT_VERSION, **config}, f, indent=1)


class MiniModel(CaptionEmbedder):
    name = "vlpipe-mini"
    image_size = IMAGE_SIZE

    def __init__(self, path: str, config: dict, state: dict, device: torch.device, dtype):
        self.path, self.config, self.device, self.dtype = path, config, device, dtype
        # On CPU the joint heads stay fp32 (tiny, and the stored embeddings keep fp32's
        # accuracy); the tower and the caption decoder run in `dtype`: with its weights in bf16
        # the decoder is 1.5x faster on native-bf16 CPUs at dev BLEU-4 within 0.001
        # (docs/precision.md).
        cpu_half = device.type == "cpu" and dtype != torch.float32
        self.head_dtype = torch.float32 if cpu_half else dtype
        self.tower_name = check_tower(config.get("tower", "lite0"))
        self.image_size = TOWERS[self.tower_name]["image_size"]
        self.dim = int(config["dim"])
        self.num_beams = int(config.get("num_beams", 1))
        self.vocab = Vocab(config["vocab"])
        self._tower_state = {k[6:]: v for k, v in state.items() if k.startswith("tower.")}
        self.heads, self.decoder = build_parts(config)
        self.heads.load_state_dict(_part(state, "heads."), strict=True)
        self.decoder.load_state_dict(_part(state, "decoder."), strict=True)
        self.heads.to(device, self.head_dtype).eval()
        self.decoder.to(device, dtype).eval()
        self._fingerprint = weights_fingerprint(os.path.join(path, WEIGHTS_NAME), self.dim)
        self._tower: EfficientNetLite | None = None
        self._text = None
        self.backend = "torch"  # or "openvino": the image tower runs compiled (load's backend=)
        self._compiled_grid = None
        self._tower_lock = threading.Lock()  # a worker loads the tower in a background thread

    @classmethod
    def load(
        cls, path: str, device: str = "auto", precision: str = "auto", backend: str = "torch"
    ) -> MiniModel:
        cfg_path, weights = os.path.join(path, CONFIG_NAME), os.path.join(path, WEIGHTS_NAME)
        if not (os.path.isfile(cfg_path) and os.path.isfile(weights)):
            raise VlpipeError(f"{path}: not a vlpipe-mini model ({CONFIG_NAME} + {WEIGHTS_NAME})")
        with open(cfg_path) as f:
            config = json.load(f)
        if config.get("format_version") not in READABLE_FORMATS:
            raise VlpipeError(f"{cfg_path}: unsupported format {config.get('format_version')}")
        dev = resolve_device(device)
        dtype = resolve_dtype(dev, precision, bf16_measured=True)
        state = {k: torch.from_numpy(v) for k, v in load_weights(weights).items()}
        model = cls(path, config, state, dev, dtype)
        model.backend = resolve_backend(backend, dev.type)
        return model

    # -- towers, loaded on first use
    def tower(self) -> EfficientNetLite:
        with self._tower_lock:
            if self._tower is None:
                tower = self._fp32_tower().to(self.device, self.dtype)
                self._tower = tower.to(memory_format=torch.channels_last)
        return self._tower

    def load_image_tower(self) -> None:
        if self.backend == "openvino":
            self.compiled_grid()
        else:
            self.tower()

    def _fp32_tower(self) -> EfficientNetLite:
        tower = EfficientNetLite.pretrained(self.tower_name)
        merged = tower.state_dict()
        missing = [k for k in self._tower_state if k not in merged]
        if missing:
            raise VlpipeError(f"{self.path}: unknown image tower weights, e.g. {missing[0]}")
        merged.update(self._tower_state)
        tower.load_state_dict(merged, strict=True)
        return fuse_batchnorm(tower).eval()  # pretrained() is in eval mode: running statistics

    def compiled_grid(self):
        """The tower's grid as an OpenVINO call (converted once, then cached on disk)."""
        with self._tower_lock:
            if self._compiled_grid is None:
                from vlpipe.models.openvino_graph import compile_module

                size = self.image_size
                key = f"{self._fingerprint}-{self.tower_name}-grid{size}"
                self._compiled_grid = compile_module(
                    lambda: TowerGrid(self._fp32_tower()),
                    torch.zeros(2, 3, size, size),
                    key,
                    self.dtype,
                )
        return self._compiled_grid

    def text_tower(self):
        if self._text is None:
            from vlpipe.models.mini.text import MiniLM

            self._text = MiniLM(self.device, self.head_dtype)
        return self._text

    # -- the interface
    def preprocess(self, image: Image.Image) -> torch.Tensor:
        return preprocess_image(image, self.image_size)

    def grid(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 NCHW to the (N, 1280, 7, 7) grid (8x8 for Lite1) both heads read: the one
        image-tower pass."""
        if self.backend == "openvino":
            x = normalize_pixels(pixels).float().numpy()
            return torch.from_numpy(self.compiled_grid()(x)).to(self.head_dtype)
        x = normalize_pixels(pixels.to(self.device)).to(self.dtype)
        with torch.inference_mode():
            grid = self.tower().grid(x.contiguous(memory_format=torch.channels_last))
        return grid.to(self.head_dtype)

    def memory(self, grid: torch.Tensor) -> torch.Tensor:
        """The caption decoder's memory cells for a grid, in the decoder's precision."""
        with torch.inference_mode():
            return self.decoder.memory(grid.to(self.device, self.dtype))

    def captions_from_grid(self, grid: torch.Tensor, max_tokens: int = 30) -> list[str]:
        with torch.inference_mode():
            ids = self.decoder.generate(self.memory(grid), self.num_beams, max_tokens)
        return [self.vocab.decode(row) for row in ids]

    def embed_grid(self, grid: torch.Tensor) -> np.ndarray:
        with torch.inference_mode():
            return self.heads.embed_grid(grid).float().cpu().numpy()

    def caption(self, pixels: torch.Tensor, max_tokens: int = 30) -> list[str]:
        return self.captions_from_grid(self.grid(pixels), max_tokens)

    def embed_images(self, pixels: torch.Tensor) -> np.ndarray:
        return self.embed_grid(self.grid(pixels))

    def caption_and_embed(
        self, pixels: torch.Tensor, max_tokens: int = 30
    ) -> tuple[list[str], np.ndarray]:
        grid = self.grid(pixels)
        return self.captions_from_grid(grid, max_tokens), self.embed_grid(grid)

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        feats = self.text_tower().encode(list(texts)).to(self.device, self.head_dtype)
        with torch.inference_mode():
            return self.heads.text(feats).float().cpu().numpy()

    def fingerprint(self) -> str:
        return self._fingerprint

    def describe(self) -> dict:
        return {
            "name": self.name,
            "format_version": self.config.get("format_version"),
            "dim": self.dim,
            "num_beams": self.num_beams,
            "tail_stage": self.config.get("tail_stage"),
            "weights_sha256": self._fingerprint.rsplit("-", 1)[-1],
            **tower_entry(self.config),
        }


class TowerGrid(torch.nn.Module):
    """The tower's grid as a module's forward, the form a graph converter takes."""

    def __init__(self, tower: EfficientNetLite):
        super().__init__()
        self.tower = tower

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tower.grid(x)


def _part(state: dict, prefix: str) -> dict:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def load_mini(
    path: str | None = None, device: str = "auto", precision: str = "auto", backend: str = "torch"
) -> MiniModel:
    """The shipped model (path None) or a trained directory."""
    return MiniModel.load(path or SHIPPED_DIR, device=device, precision=precision, backend=backend)
