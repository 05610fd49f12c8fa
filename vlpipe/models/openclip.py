"""Joint embedders from `open_clip` (LAION, DataComp, MetaCLIP weights): `open_clip:SPEC` names.

    open_clip:ARCH@TAG                 a pretrained tag, e.g. ViT-B-32@laion2b_s34b_b79k
    open_clip:ARCH@/path/to/ckpt.pt    a local checkpoint (.pt/.bin weights_only, or .safetensors)
    open_clip:hf-hub:ORG/NAME          an open_clip model on the Hugging Face hub
    open_clip:local-dir:/path          a folder holding open_clip_config.json and its weights

A bare `open_clip:ARCH` (random weights) is refused. Everything the manifest records (dimension,
fingerprint, image size) comes from the model config and the weights' identity (a tag's source,
or a sample of a local file's bytes), so the driver of a run never loads weights; the model loads
once, on first use, with open_clip's own loader. The image transform is open_clip's own, split in
two: its PIL resize/crop runs in the decode threads (uint8), its Normalize on the model's device.
open_clip has no per-tower loader: a text-only user (text search) builds the whole model once and
frees the image tower.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vlpipe.errors import ModelLoadError
from vlpipe.models.base import Embedder, l2_normalize, resolve_device, resolve_dtype

PREFIX = "open_clip:"
_SCHEMAS = ("hf-hub:", "local-dir:")
_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")
#: what open_clip.factory._find_checkpoint_in_dir prefers in a model folder, in its order
_DIR_WEIGHTS = (
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.safetensors",
    "open_clip_pytorch_model.bin",
    "open_clip_pytorch_model.pth",
    "model.safetensors",
    "pytorch_model.bin",
    "pytorch_model.pth",
    "model.pth",
)


def is_open_clip(name: str) -> bool:
    return name.startswith(PREFIX)


@dataclass(frozen=True)
class OpenClipSpec:
    """A parsed `open_clip:` name: what open_clip.create_model takes and where weights are."""

    name: str  # the full vlpipe name
    model_name: str  # ARCH, hf-hub:ORG/NAME or local-dir:PATH
    pretrained: str | None  # a tag or a checkpoint file (ARCH form only)

    @property
    def is_file(self) -> bool:
        return self.pretrained is not None and _looks_like_path(self.pretrained)


def _looks_like_path(value: str) -> bool:
    return "/" in value or os.sep in value or value.endswith(_CHECKPOINT_SUFFIXES)


def _error(name: str, why: str) -> ModelLoadError:
    return ModelLoadError(f"cannot load model {name!r}: {why}")


def parse_spec(name: str) -> OpenClipSpec:
    """Split a name into architecture and weights; refuse random init and empty parts."""
    spec = name[len(PREFIX) :]
    if spec.startswith(_SCHEMAS):
        schema, _, ident = spec.partition(":")
        if not ident.strip("/"):
            raise _error(name, f"{schema}: needs {'ORG/NAME' if schema == 'hf-hub' else 'a path'}")
        return OpenClipSpec(name, spec, None)
    arch, at, weights = spec.partition("@")
    if not arch:
        raise _error(name, "name an open_clip architecture, e.g. open_clip:ViT-B-32@TAG")
    if not at or not weights:
        raise _error(
            name,
            "open_clip needs pretrained weights (it would otherwise be randomly initialised): "
            f"open_clip:{arch}@TAG (a pretrained tag), open_clip:{arch}@/path/to/checkpoint.pt, "
            "or open_clip:hf-hub:ORG/NAME",
        )
    return OpenClipSpec(name, arch, weights)


# --- everything the manifest needs, without weights -----------------------------------------------


def _model_config(spec: OpenClipSpec) -> dict:
    import open_clip

    if spec.model_name.startswith(_SCHEMAS):
        whole = _schema_config_file(spec)
        return whole.get("model_cfg", whole)
    try:
        config = open_clip.get_model_config(spec.model_name)
    except Exception as exc:  # noqa: BLE001 - hub and file errors alike become one line
        raise _error(spec.name, _one_line(exc)) from exc
    if config is None:
        raise _error(
            spec.name,
            f"{spec.model_name!r} is not an open_clip architecture (e.g. ViT-B-32, ViT-L-14, "
            "ViT-SO400M-14-SigLIP; open_clip.list_models() lists them all)",
        )
    return config


def _schema_config_file(spec: OpenClipSpec) -> dict:
    """The whole open_clip_config.json of an hf-hub: or local-dir: model: its model_cfg and
    its preprocess_cfg (a small download for hf-hub:, cached by huggingface_hub)."""
    schema, _, ident = spec.model_name.partition(":")
    try:
        if schema == "local-dir":
            path = Path(ident) / "open_clip_config.json"
        else:
            from open_clip.pretrained import download_pretrained_from_hf

            path = download_pretrained_from_hf(ident, filename="open_clip_config.json")
        whole = json.loads(Path(path).read_text(encoding="utf-8"))
    except Exception as exc:  # noqa: BLE001
        raise _error(spec.name, _one_line(exc)) from exc
    if schema == "hf-hub":  # huggingface_hub's cache holds it under snapshots/COMMIT/
        whole["_revision"] = Path(path).parent.name
    return whole


def _one_line(exc: BaseException) -> str:
    """The error's text on one line (a state dict mismatch names its keys on the next ones)."""
    text = " ".join(str(exc).split())
    return text[:300] if text else type(exc).__name__


def resolve_weights(spec: OpenClipSpec, config: dict) -> tuple[dict, dict]:
    """(preprocessing config, identity of the weights) as open_clip.create_model settles them."""
    import open_clip
    from open_clip.transform import PreprocessCfg, merge_preprocess_dict

    preprocess = asdict(PreprocessCfg())
    if spec.model_name.startswith(_SCHEMAS):
        whole = _schema_config_file(spec)
        preprocess = merge_preprocess_dict(preprocess, whole.get("preprocess_cfg", {}))
        weights = {"source": spec.model_name, "revision": whole.get("_revision")}
        if spec.model_name.startswith("local-dir:"):
            weights = {"file": _file_digest(_dir_checkpoint(spec))}
    elif spec.is_file:
        weights = {"file": _file_digest(check_checkpoint(spec))}
    else:
        tag = open_clip.get_pretrained_cfg(spec.model_name, spec.pretrained)
        if not tag:
            tags = open_clip.list_pretrained_tags_by_model(spec.model_name)
            raise _error(
                spec.name,
                f"unknown pretrained tag {spec.pretrained!r} for {spec.model_name} (its tags: "
                f"{', '.join(tags) or 'none'}); or give a checkpoint file path",
            )
        preprocess = merge_preprocess_dict(preprocess, tag)
        weights = {"tag": spec.pretrained, **{k: tag.get(k) for k in ("hf_hub", "url")}}
    preprocess["size"] = config["vision_cfg"].get("image_size", preprocess["size"])
    return preprocess, weights


def _dir_checkpoint(spec: OpenClipSpec) -> str:
    folder = Path(spec.model_name.partition(":")[2])
    for filename in _DIR_WEIGHTS:
        if (folder / filename).is_file():
            return str(folder / filename)
    raise _error(spec.name, f"{folder} holds no weights ({', '.join(_DIR_WEIGHTS[:3])}, ...)")


_NOT_STATE_DICT = (
    "is not a state dict checkpoint that loads with weights_only=True (save one with "
    "torch.save(model.state_dict(), path) or as .safetensors)"
)


def check_checkpoint(spec: OpenClipSpec) -> str:
    """The checkpoint file, refused in one line unless it holds a state dict of tensors. A .pt
    is memory-mapped with weights_only, so this reads no more than its index of tensors."""
    path = os.path.expanduser(spec.pretrained)
    if not os.path.isfile(path):
        raise _error(spec.name, f"no such checkpoint file {path}")
    try:
        if path.endswith(".safetensors"):
            from safetensors import safe_open

            with safe_open(path, framework="pt") as f:
                keys = list(f.keys())
            tensors = bool(keys)
        else:
            loaded = _torch_load(path)
            if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
                loaded = loaded["state_dict"]
            tensors = (
                isinstance(loaded, dict)
                and loaded
                and all(torch.is_tensor(v) for v in loaded.values())
            )
    except Exception as exc:  # noqa: BLE001 - pickles, zip errors, garbage: all one line
        raise _error(spec.name, f"{path} {_NOT_STATE_DICT} ({type(exc).__name__})") from exc
    if not tensors:
        raise _error(spec.name, f"{path} {_NOT_STATE_DICT}")
    return path


def _torch_load(path: str):
    """weights_only always; memory-mapped where the file's format allows (torch.save's zip)."""
    try:
        return torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except RuntimeError as exc:
        if "mmap" not in str(exc):
            raise
        return torch.load(path, map_location="cpu", weights_only=True)


def _file_digest(path: str) -> str:
    """Size and 4 KiB from 16 evenly spaced offsets: cheap even for GBs, and tells apart
    different weights saved under the same name."""
    digest = hashlib.sha1()
    size = os.path.getsize(path)
    digest.update(str(size).encode())
    with open(path, "rb") as f:
        for i in range(16):
            f.seek(size * i // 16)
            digest.update(f.read(4096))
    return digest.hexdigest()


# --- the embedder ---------------------------------------------------------------------------------


class OpenClipEmbedder(Embedder):
    """An open_clip model as a vlpipe Embedder; it loads on first use, once, under a lock."""

    def __init__(
        self,
        spec: OpenClipSpec,
        config: dict,
        preprocess: dict,
        weights: dict,
        device: torch.device,
        dtype: torch.dtype,
    ):
        from open_clip.transform import PreprocessCfg, image_transform_v2

        self.spec, self.config, self.weights = spec, config, weights
        self.preprocess_cfg = preprocess
        self.name = spec.name
        self.device, self.dtype = device, dtype
        self.dim = int(config["embed_dim"])
        size = preprocess["size"]
        self.image_size = max(size) if isinstance(size, (list, tuple)) else int(size)
        self._pil_steps, self._mean, self._std = _split_transform(
            image_transform_v2(PreprocessCfg(**preprocess), is_train=False), spec.name
        )
        self._model = None
        self._towers: set[str] = set()
        self._tokenizer = None
        self._load_lock = threading.Lock()
        self._tokenizer_lock = threading.Lock()  # a Hugging Face tokenizer is not re-entrant

    @property
    def loaded_towers(self) -> list[str]:
        return sorted(self._towers)

    def _get_model(self, tower: str):
        """The model with `tower` ("text" or "vision") in memory. A text-only first use frees
        the image tower; a later image call then loads the model whole."""
        if tower not in self._towers:
            with self._load_lock:
                if tower not in self._towers:
                    model = self._load_model()
                    if tower == "text" and not self._towers:
                        model.visual = None  # open_clip's encode_text never touches it
                        self._towers = {"text"}
                    else:
                        self._towers = {"text", "vision"}
                    self._model = model
        return self._model

    def _load_model(self):
        import open_clip

        precision = {torch.float16: "fp16", torch.bfloat16: "bf16"}.get(self.dtype, "fp32")
        weights = self.spec.pretrained
        try:
            model = open_clip.create_model(
                self.spec.model_name,
                pretrained=os.path.expanduser(weights) if weights else None,
                precision=precision,
                device=self.device,
                require_pretrained=True,
                weights_only=True,
            )
        except Exception as exc:  # noqa: BLE001 - open_clip raises RuntimeError, OSError, ...
            raise _error(self.name, _one_line(exc)) from exc
        return model.eval().requires_grad_(False)

    def _get_tokenizer(self):
        if self._tokenizer is None:
            import open_clip

            with self._load_lock:
                try:
                    self._tokenizer = open_clip.get_tokenizer(self.spec.model_name)
                except Exception as exc:  # noqa: BLE001
                    raise _error(self.name, _one_line(exc)) from exc
        return self._tokenizer

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        image = image if image.mode == "RGB" else image.convert("RGB")
        for step in self._pil_steps:
            image = step(image)
        return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).contiguous()

    def embed_images(self, pixels: torch.Tensor) -> np.ndarray:
        model = self._get_model("vision")
        a = (1.0 / (255.0 * self._std)).view(1, -1, 1, 1).to(self.device)
        b = (-self._mean / self._std).view(1, -1, 1, 1).to(self.device)
        x = pixels.to(self.device, non_blocking=True).to(torch.float32).mul_(a).add_(b)
        with torch.inference_mode():
            features = model.encode_image(x.to(self.dtype))
        return l2_normalize(features.float().cpu().numpy())

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        tokenizer = self._get_tokenizer()
        model = self._get_model("text")
        with self._tokenizer_lock:
            tokens = tokenizer(list(texts))
        with torch.inference_mode():
            features = model.encode_text(tokens.to(self.device))
        return l2_normalize(features.float().cpu().numpy())

    def describe(self) -> dict:
        return {
            "family": "open_clip",
            "name_or_path": self.name,
            "model": self.spec.model_name,
            "pretrained": self.spec.pretrained,
            "dim": self.dim,
            "image_size": self.image_size,
            "dtype": str(self.dtype).removeprefix("torch."),
        }

    def fingerprint(self) -> str:
        """The architecture, the preprocessing and the weights' identity: the same on every
        machine, device and precision, known without loading the weights."""
        blob = json.dumps(
            {"config": self.config, "pixels": self.preprocess_cfg, "weights": self.weights},
            sort_keys=True,
            default=str,
        )
        return hashlib.sha1(blob.encode()).hexdigest()[:16]


def _split_transform(transform, name: str):
    """open_clip's eval Compose -> (its PIL steps, mean, std): ToTensor's /255 and Normalize
    then run per batch on the device."""
    from torchvision.transforms import Normalize, ToTensor

    steps = list(getattr(transform, "transforms", []))
    at = next((i for i, s in enumerate(steps) if isinstance(s, ToTensor)), None)
    if at is None or at + 2 != len(steps) or not isinstance(steps[-1], Normalize):
        raise _error(name, f"unexpected open_clip image transform {transform}")
    norm = steps[-1]
    mean = torch.tensor(norm.mean, dtype=torch.float32)
    std = torch.tensor(norm.std, dtype=torch.float32)
    return steps[:at], mean, std


def load_open_clip_embedder(name: str, device: str = "auto", precision: str = "auto") -> Embedder:
    """An `open_clip:` embedder; checks the name and the weights' source now, loads them later."""
    spec = parse_spec(name)
    config = _model_config(spec)
    preprocess, weights = resolve_weights(spec, config)
    torch_device = resolve_device(device)
    dtype = resolve_dtype(torch_device, precision)
    return OpenClipEmbedder(spec, config, preprocess, weights, torch_device, dtype)
