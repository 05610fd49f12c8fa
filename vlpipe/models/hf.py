"""Captioners (BLIP, GIT, VisionEncoderDecoder) and joint embedders (CLIP, SigLIP) over
`transformers`, loaded with `from_pretrained` from a hub id or a local directory.

Images are resized and cropped with PIL in the decode threads and travel as uint8 (4x smaller than
float); the batched call normalises them on the model's device with the checkpoint's own
mean/std. Embedders call the text and vision towers directly rather than `get_*_features` (which
returns a tensor in transformers 4 and an output object in 5), and load each tower on first use,
so text search never reads the vision weights. Any load failure becomes one `ModelLoadError` line.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vlpipe.errors import ModelLoadError, VlpipeError
from vlpipe.models.base import Captioner, Embedder, l2_normalize, resolve_device, resolve_dtype

#: model_type -> generation class
CAPTIONERS = {
    "blip": "BlipForConditionalGeneration",
    "git": "GitForCausalLM",
    "vision-encoder-decoder": "VisionEncoderDecoderModel",
}


@dataclass(frozen=True)
class Towers:
    """How to run one embedder family's towers: class names, output field, text padding."""

    text_class: str
    vision_class: str
    text_output: str
    vision_output: str
    pad_to_max: bool  # SigLIP was trained on max-length padding and pools the last position
    text_inputs: tuple[str, ...]


EMBEDDERS = {
    "clip": Towers(
        "CLIPTextModelWithProjection",
        "CLIPVisionModelWithProjection",
        "text_embeds",
        "image_embeds",
        False,
        ("input_ids", "attention_mask"),
    ),
    "siglip": Towers(
        "SiglipTextModel",
        "SiglipVisionModel",
        "pooler_output",
        "pooler_output",
        True,
        ("input_ids",),
    ),
}

_HUB_ID = re.compile(r"^[\w.-]+(/[\w.-]+)?$")
_VOLATILE_CONFIG_KEYS = {"_name_or_path", "transformers_version", "torch_dtype", "dtype"}


# --- loading: names to configs, with one-line errors ----------------------------------------------


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """No progress bars or 'unexpected weights' reports while loading one tower of a checkpoint."""
    from transformers.utils import logging

    level, bar = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(level)
        if bar:
            logging.enable_progress_bar()


def _load_error(name: str, exc: BaseException) -> ModelLoadError:
    """The one line a user needs, from whatever transformers / huggingface_hub raised."""
    from huggingface_hub import errors

    causes, cause = [], exc
    while cause is not None and len(causes) < 10:
        causes.append(cause)
        cause = cause.__cause__ or cause.__context__
    kinds = tuple(type(c) for c in causes)
    local = "download it elsewhere and pass its local directory"
    if any(issubclass(k, errors.LocalEntryNotFoundError) for k in kinds):
        why = f"not a local directory and the Hugging Face hub is unreachable (offline); {local}"
    elif any(issubclass(k, errors.GatedRepoError) for k in kinds):
        why = "a gated hub model: accept its terms on huggingface.co and log in (`hf auth login`)"
    elif any(issubclass(k, errors.RepositoryNotFoundError) for k in kinds):
        why = "no such local directory or Hugging Face hub model"
    elif any(issubclass(k, errors.HFValidationError) for k in kinds):
        why = "neither a local directory nor a valid Hugging Face hub id (org/name)"
    else:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        why = first[:300]
    return ModelLoadError(f"cannot load model {name!r}: {why}")


def _resolve(name: str) -> str:
    """A local directory (checked here, for a precise message) or a hub id."""
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelLoadError(
                f"cannot load model {name!r}: the directory holds no config.json, so it is not a "
                "transformers checkpoint (save one with save_pretrained)"
            )
        return str(path)
    if path.exists() or name.startswith((".", "/", "~")) or not _HUB_ID.match(name):
        raise ModelLoadError(
            f"cannot load model {name!r}: no such directory, and not a Hugging Face hub id "
            "(org/name); pass a model directory, a hub id or 'mini'"
        )
    return name


def _load_config(name: str):
    from transformers import AutoConfig

    location = _resolve(name)
    try:
        with _quiet():
            return location, AutoConfig.from_pretrained(location)
    except (OSError, ValueError, KeyError) as exc:
        raise _load_error(name, exc) from exc


def _from_pretrained(name: str, loader, *args, **kwargs):
    """Call a transformers loader, turning its failures into one ModelLoadError line."""
    try:
        with _quiet():
            return loader(*args, **kwargs)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise _load_error(name, exc) from exc


def _unsupported(name: str, model_type: str, kind: str, known: dict) -> ModelLoadError:
    return ModelLoadError(
        f"cannot load model {name!r}: its model_type {model_type!r} is not a supported {kind} "
        f"(vlpipe supports {', '.join(sorted(known))}); pick another model or 'mini'"
    )


def _place(model: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)


# --- pixels: PIL resize/crop per image on CPU, normalisation per batch on the device --------------


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

    def describe(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v is not None}


def _pixel_recipe(name: str, location: str) -> PixelRecipe:
    from transformers import AutoImageProcessor

    processor = _from_pretrained(name, AutoImageProcessor.from_pretrained, location)
    return PixelRecipe.from_processor(processor, name)


# --- captioners -----------------------------------------------------------------------------------


class HFCaptioner(Captioner):
    """Greedy (or beam) captions from a transformers generation model; safe to share by threads."""

    def __init__(
        self,
        name: str,
        model,
        tokenizer,
        recipe: PixelRecipe,
        device: torch.device,
        dtype: torch.dtype,
        num_beams: int = 1,
        max_tokens: int = 30,
    ):
        self.name, self.model, self.tokenizer, self.recipe = name, model, tokenizer, recipe
        self.device, self.dtype = device, dtype
        self.num_beams, self.max_tokens = num_beams, max_tokens
        self.image_size = recipe.image_size
        self._tokenizer_lock = threading.Lock()  # a Rust tokenizer is not re-entrant

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        return self.recipe.to_uint8(image)

    def caption(self, pixels: torch.Tensor, max_tokens: int | None = None) -> list[str]:
        with torch.inference_mode():
            ids = self.model.generate(
                pixel_values=self.recipe.normalize(pixels, self.device, self.dtype),
                do_sample=False,
                num_beams=self.num_beams,
                max_new_tokens=max_tokens or self.max_tokens,
            )
        with self._tokenizer_lock:
            texts = self.tokenizer.batch_decode(ids.cpu(), skip_special_tokens=True)
        return [t.strip() for t in texts]

    def describe(self) -> dict:
        return {
            "family": self.model.config.model_type,
            "name_or_path": self.name,
            "dtype": str(self.dtype).removeprefix("torch."),
            "image_size": self.image_size,
            "num_beams": self.num_beams,
            "default_max_tokens": self.max_tokens,  # the pipeline passes its own bound
        }


def load_hf_captioner(
    name_or_path: str,
    device: str = "auto",
    precision: str = "auto",
    num_beams: int = 1,
    max_tokens: int = 30,
) -> Captioner:
    """A BLIP, GIT or VisionEncoderDecoder captioner from a hub id or a local directory."""
    import transformers

    if num_beams < 1:
        raise VlpipeError(f"num_beams must be at least 1, got {num_beams}")
    location, config = _load_config(name_or_path)
    if config.model_type not in CAPTIONERS:
        raise _unsupported(name_or_path, config.model_type, "captioner", CAPTIONERS)
    torch_device = resolve_device(device)
    dtype = resolve_dtype(torch_device, precision)
    recipe = _pixel_recipe(name_or_path, location)
    tokenizer = _from_pretrained(name_or_path, transformers.AutoTokenizer.from_pretrained, location)
    model_class = getattr(transformers, CAPTIONERS[config.model_type])
    model = _from_pretrained(name_or_path, model_class.from_pretrained, location)
    model = _place(model, torch_device, dtype)
    if model.generation_config.pad_token_id is None:  # GPT-2 style decoders have no pad token
        pad = tokenizer.pad_token_id
        model.generation_config.pad_token_id = pad if pad is not None else tokenizer.eos_token_id
    return HFCaptioner(
        name_or_path, model, tokenizer, recipe, torch_device, dtype, num_beams, max_tokens
    )


# --- joint embedders ------------------------------------------------------------------------------


class HFEmbedder(Embedder):
    """CLIP / SigLIP: each tower loads on first use, once, even when threads race for it."""

    def __init__(
        self,
        name: str,
        location: str,
        config,
        recipe: PixelRecipe,
        device: torch.device,
        dtype: torch.dtype,
    ):
        self.name, self.location, self.config, self.recipe = name, location, config, recipe
        self.family = config.model_type
        self.towers = EMBEDDERS[self.family]
        self.device, self.dtype = device, dtype
        self.dim = int(getattr(config, "projection_dim", None) or config.text_config.hidden_size)
        self.image_size = recipe.image_size
        self._loaded: dict[str, object] = {}
        self._load_lock = threading.Lock()
        self._tokenizer_lock = threading.Lock()

    @property
    def loaded_towers(self) -> list[str]:
        """The towers in memory so far: text search never loads `vision`."""
        return sorted(part for part in self._loaded if part != "tokenizer")

    def _get(self, part: str):
        """The `text` tower, `vision` tower or `tokenizer`, loaded once under a lock."""
        if part not in self._loaded:
            with self._load_lock:
                if part not in self._loaded:
                    self._loaded[part] = self._load(part)
        return self._loaded[part]

    def _load(self, part: str):
        import transformers

        if part == "tokenizer":
            loader = transformers.AutoTokenizer.from_pretrained
            return _from_pretrained(self.name, loader, self.location)
        # The tower's own config, told the joint space's width (CLIP keeps it at the top level).
        tower_config = copy.deepcopy(getattr(self.config, f"{part}_config"))
        if hasattr(self.config, "projection_dim"):
            tower_config.projection_dim = self.config.projection_dim
        cls = getattr(transformers, getattr(self.towers, f"{part}_class"))
        model = _from_pretrained(self.name, cls.from_pretrained, self.location, config=tower_config)
        return _place(model, self.device, self.dtype)

    def _embeddings(self, output, part: str) -> np.ndarray:
        field = getattr(self.towers, f"{part}_output")
        tensor = output if torch.is_tensor(output) else getattr(output, field)
        return l2_normalize(tensor.float().cpu().numpy())

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        return self.recipe.to_uint8(image)

    def embed_images(self, pixels: torch.Tensor) -> np.ndarray:
        model = self._get("vision")
        with torch.inference_mode():
            output = model(pixel_values=self.recipe.normalize(pixels, self.device, self.dtype))
        return self._embeddings(output, "vision")

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        tokenizer, model = self._get("tokenizer"), self._get("text")
        with self._tokenizer_lock:
            batch = tokenizer(
                list(texts),
                padding="max_length" if self.towers.pad_to_max else True,
                truncation=True,
                max_length=self.config.text_config.max_position_embeddings,
                return_tensors="pt",
            )
        inputs = {k: batch[k].to(self.device) for k in self.towers.text_inputs if k in batch}
        with torch.inference_mode():
            output = model(**inputs)
        return self._embeddings(output, "text")

    def describe(self) -> dict:
        return {
            "family": self.family,
            "name_or_path": self.name,
            "dim": self.dim,
            "image_size": self.image_size,
            "dtype": str(self.dtype).removeprefix("torch."),
        }

    def fingerprint(self) -> str:
        """The embedding space's identity, the same on any machine, device and precision: the
        config's content, the image preprocessing, and a sample of the weight files' bytes
        (which tells apart different weights saved to the same place)."""
        config = {k: v for k, v in self.config.to_dict().items() if k not in _VOLATILE_CONFIG_KEYS}
        blob = json.dumps(
            {"config": config, "pixels": self.recipe.describe(), "weights": self._weights_digest()},
            sort_keys=True,
            default=str,
        )
        return hashlib.sha1(blob.encode()).hexdigest()[:16]

    def _weights_digest(self) -> str:
        """4 KiB from 16 evenly spaced offsets of each weight file: cheap even for GBs."""
        digest = hashlib.sha1()
        for path in self._weight_files():
            size = os.path.getsize(path)
            digest.update(f"{Path(path).name}:{size}".encode())
            with open(path, "rb") as f:
                for i in range(16):
                    f.seek(size * i // 16)
                    digest.update(f.read(4096))
        return digest.hexdigest()

    def _weight_files(self) -> list[str]:
        """The checkpoint's weight files on local disk (a hub model's are fetched to its cache);
        a sharded checkpoint's index first, then every shard it names."""
        for filename in ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin"):
            path = self._local_file(filename)
            if path and filename.endswith(".index.json"):
                shards = sorted(set(json.loads(Path(path).read_text())["weight_map"].values()))
                return [path, *(self._local_file(shard, required=True) for shard in shards)]
            if path:
                return [path]
        raise ModelLoadError(f"cannot load model {self.name!r}: it holds no weight files")

    def _local_file(self, filename: str, required: bool = False) -> str | None:
        from transformers.utils import cached_file

        try:
            return cached_file(
                self.location, filename, _raise_exceptions_for_missing_entries=required
            )
        except (OSError, ValueError) as exc:
            raise _load_error(self.name, exc) from exc


def load_hf_embedder(name_or_path: str, device: str = "auto", precision: str = "auto") -> Embedder:
    """A CLIP or SigLIP joint embedder from a hub id or a local directory (towers load lazily)."""
    location, config = _load_config(name_or_path)
    if config.model_type not in EMBEDDERS:
        raise _unsupported(name_or_path, config.model_type, "embedder", EMBEDDERS)
    torch_device = resolve_device(device)
    dtype = resolve_dtype(torch_device, precision)
    recipe = _pixel_recipe(name_or_path, location)
    embedder = HFEmbedder(name_or_path, location, config, recipe, torch_device, dtype)
    embedder._weight_files()  # fail now, not at the first batch, when there are no weights
    return embedder
