"""Captioners (BLIP, GIT, VisionEncoderDecoder) and joint embedders (CLIP, SigLIP, SigLIP 2) over
`transformers`, loaded with `from_pretrained` from a hub id or a local directory.

Images are resized and cropped with PIL in the decode threads and travel as uint8 (4x smaller than
float); the batched call normalises them on the model's device with the checkpoint's own
mean/std. Embedders call the text and vision towers directly rather than `get_*_features` (which
returns a tensor in transformers 4 and an output object in 5), and load each tower on first use,
so text search never reads the vision weights. Any load failure becomes one `ModelLoadError` line.

The loading helpers are in vlpipe.models.hf_load, the image preprocessing in
vlpipe.models.hf_pixels (PixelRecipe is importable from here too).
"""

from __future__ import annotations

import copy
import threading
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from vlpipe.errors import ModelLoadError, VlpipeError
from vlpipe.models.backends import OPENVINO_HUB_CAPTIONERS, OPENVINO_HUB_EMBEDDERS, resolve_backend
from vlpipe.models.base import Captioner, Embedder, l2_normalize, resolve_device, resolve_dtype
from vlpipe.models.hf_facts import config_or_facts, joint_width, save_facts
from vlpipe.models.hf_load import from_pretrained as _from_pretrained
from vlpipe.models.hf_load import load_config as _load_config
from vlpipe.models.hf_load import place as _place
from vlpipe.models.hf_load import unsupported as _unsupported
from vlpipe.models.hf_pixels import PixelRecipe
from vlpipe.models.hf_pixels import pixel_recipe as _pixel_recipe
from vlpipe.models.hf_weights import checkpoint_fingerprint, weight_files
from vlpipe.models.precision import BF16_MEASURED_HUB_EMBEDDERS
from vlpipe.models.prompting import Prompting, takes_no_prompt

__all__ = [
    "CAPTIONERS",
    "EMBEDDERS",
    "HFCaptioner",
    "HFEmbedder",
    "PixelRecipe",
    "Towers",
    "load_hf_captioner",
    "load_hf_embedder",
]

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
    # SigLIP 2 with NaFlex variable resolution (vlpipe.models.hf_naflex); its fixed-resolution
    # checkpoints are model_type "siglip" above. Its Gemma tokenizer's mask goes in, as in HF's
    # own processor call.
    "siglip2": Towers(
        "Siglip2TextModel",
        "Siglip2VisionModel",
        "pooler_output",
        "pooler_output",
        True,
        ("input_ids", "attention_mask"),
    ),
}

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

    def candidates(self, pixels: torch.Tensor, n: int, max_tokens: int | None = None):
        """n captions per image: the n best beams of a width-n beam search."""
        with torch.inference_mode():
            ids = self.model.generate(
                pixel_values=self.recipe.normalize(pixels, self.device, self.dtype),
                do_sample=False,
                num_beams=max(n, self.num_beams),
                num_return_sequences=n,
                max_new_tokens=max_tokens or self.max_tokens,
            )
        with self._tokenizer_lock:
            texts = [
                t.strip() for t in self.tokenizer.batch_decode(ids.cpu(), skip_special_tokens=True)
            ]
        return [texts[i * n : (i + 1) * n] for i in range(len(pixels))]

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
    prompting: Prompting | None = None,
    backend: str = "torch",
) -> Captioner:
    """A BLIP, GIT or VisionEncoderDecoder captioner, or a prompted vision-language model
    (vlpipe.models.prompted), from a hub id or a local directory. `backend` openvino runs BLIP's
    vision encoder as a compiled graph on CPU (its text decoder stays torch)."""
    import transformers

    if num_beams < 1:
        raise VlpipeError(f"num_beams must be at least 1, got {num_beams}")
    location, config = _load_config(name_or_path)
    if captioner_kind(name_or_path, config.model_type, prompting) == "prompted":
        from vlpipe.models.prompted import load_prompted_captioner

        return load_prompted_captioner(
            name_or_path, location, device, precision, prompting, max_tokens
        )
    torch_device = resolve_device(device)
    dtype = resolve_dtype(torch_device, precision)
    recipe = _pixel_recipe(name_or_path, location)
    tokenizer = _from_pretrained(name_or_path, transformers.AutoTokenizer.from_pretrained, location)
    model_class = getattr(transformers, CAPTIONERS[config.model_type])
    model = _from_pretrained(name_or_path, model_class.from_pretrained, location)
    model = _place(model, torch_device, dtype)
    if (
        config.model_type in OPENVINO_HUB_CAPTIONERS
        and resolve_backend(backend, torch_device.type) == "openvino"
    ):
        from vlpipe.models.hf_openvino import compile_captioner_vision

        key = checkpoint_fingerprint(name_or_path, location, config, recipe.describe())
        compile_captioner_vision(model, key, recipe.height_width, dtype)
    if model.generation_config.pad_token_id is None:  # GPT-2 style decoders have no pad token
        pad = tokenizer.pad_token_id
        model.generation_config.pad_token_id = pad if pad is not None else tokenizer.eos_token_id
    return HFCaptioner(
        name_or_path, model, tokenizer, recipe, torch_device, dtype, num_beams, max_tokens
    )


def captioner_kind(name: str, model_type: str, prompting: Prompting | None = None) -> str:
    """ "classic" (BLIP, GIT, VisionEncoderDecoder: no prompt) or "prompted" (any other
    AutoModelForImageTextToText family), from the config's model_type alone; one-line errors for
    an unsupported family and for a prompt or question to a classic captioner."""
    from vlpipe.models.prompted import prompted_families

    if model_type in CAPTIONERS:
        if prompting is not None and (prompting.prompt is not None or prompting.asks):
            raise takes_no_prompt(name, model_type)
        return "classic"
    if model_type in prompted_families(set(CAPTIONERS)):
        return "prompted"
    raise ModelLoadError(
        f"cannot load model {name!r}: its model_type {model_type!r} is not a supported "
        f"captioner (vlpipe supports {', '.join(sorted(CAPTIONERS))}, and any "
        "AutoModelForImageTextToText model: llava, qwen2_vl, idefics3, paligemma, ...); "
        "pick another model or 'mini'"
    )


# --- joint embedders ------------------------------------------------------------------------------


class HFEmbedder(Embedder):
    """CLIP / SigLIP / SigLIP 2: each tower loads on first use, once, even when threads race."""

    def __init__(
        self,
        name: str,
        location: str,
        config,
        recipe: PixelRecipe,
        device: torch.device,
        dtype: torch.dtype,
        backend: str = "torch",
        facts: dict | None = None,
    ):
        """`config` None: read at first use, with `facts` (vlpipe.models.hf_facts) saying the
        family, width and fingerprint meanwhile (a cached-graph image tower needs no more)."""
        self.name, self.location, self._config, self.recipe = name, location, config, recipe
        facts = facts or {"model_type": config.model_type, "dim": joint_width(config)}
        self.family, self.dim = facts["model_type"], facts["dim"]
        self._fingerprint = facts.get("fingerprint")
        self.backend = backend  # "openvino": the image tower runs as a compiled graph on CPU
        self.towers = EMBEDDERS[self.family]
        self.device, self.dtype = device, dtype
        self.image_size = recipe.image_size
        self._loaded: dict[str, object] = {}
        self._load_lock = threading.Lock()
        self._tokenizer_lock = threading.Lock()

    @property
    def config(self):
        """The transformers config (importing transformers: about 0.7 s), read at first use."""
        if self._config is None:
            self._config = _load_config(self.name)[1]
        return self._config

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
        if part == "vision" and self.backend == "openvino":
            return self._compiled_vision()  # a cached graph imports no transformers
        if part == "tokenizer":
            import transformers

            loader = transformers.AutoTokenizer.from_pretrained
            return _from_pretrained(self.name, loader, self.location)
        # On CPU the text tower stays fp32: it embeds queries and captions, cheap next to images,
        # and a query's vector then does not depend on the precision the images were run in.
        cpu_text = part == "text" and self.device.type == "cpu"
        return _place(self._tower(part), self.device, torch.float32 if cpu_text else self.dtype)

    def _tower(self, part: str) -> torch.nn.Module:
        """The `text` or `vision` tower in float32 on CPU, as saved."""
        import transformers

        # The tower's own config, told the joint space's width (CLIP keeps it at the top level).
        tower_config = copy.deepcopy(getattr(self.config, f"{part}_config"))
        if hasattr(self.config, "projection_dim"):
            tower_config.projection_dim = self.config.projection_dim
        cls = getattr(transformers, getattr(self.towers, f"{part}_class"))
        return _from_pretrained(self.name, cls.from_pretrained, self.location, config=tower_config)

    def _compiled_vision(self):
        """The image tower through OpenVINO (vlpipe.models.hf_openvino), bf16 inside where the
        embedder's dtype is bf16; the torch tower is read only to build a graph not cached."""
        from vlpipe.models.hf_openvino import compile_image_tower

        tower = lambda: self._tower("vision").eval()  # noqa: E731
        field, key = self.towers.vision_output, self.fingerprint()
        return compile_image_tower(tower, field, key, self.recipe.height_width, self.dtype)

    def _embeddings(self, output, part: str) -> np.ndarray:
        field = getattr(self.towers, f"{part}_output")
        tensor = output if torch.is_tensor(output) else getattr(output, field)
        return l2_normalize(tensor.float().cpu().numpy())

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        return self.recipe.to_uint8(image)

    def load_image_tower(self) -> None:
        self._get("vision")

    def embed_images(self, pixels: torch.Tensor) -> np.ndarray:
        model = self._get("vision")
        if self.backend == "openvino":
            x = self.recipe.normalize(pixels, self.device, torch.float32)
            return l2_normalize(model(x.numpy()))
        with torch.inference_mode():
            output = model(**self.recipe.model_inputs(pixels, self.device, self.dtype))
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
            "backend": self.backend,
        }

    def fingerprint(self) -> str:
        """The embedding space's identity (vlpipe.models.hf_weights.checkpoint_fingerprint)."""
        if self._fingerprint is None:
            pixels = self.recipe.describe()
            self._fingerprint = checkpoint_fingerprint(
                self.name, self.location, self.config, pixels
            )
            facts = {"model_type": self.family, "dim": self.dim, "fingerprint": self._fingerprint}
            save_facts(self.name, self.location, facts)
        return self._fingerprint


def load_hf_embedder(
    name_or_path: str, device: str = "auto", precision: str = "auto", backend: str = "torch"
) -> Embedder:
    """A CLIP, SigLIP or SigLIP 2 joint embedder from a hub id or a local directory (towers
    load lazily). `precision` auto picks bf16 on CPU only for families whose bf16 was measured,
    `backend` (vlpipe.models.backends) runs CLIP and SigLIP image towers through OpenVINO."""
    location, config, facts = config_or_facts(name_or_path)
    family = facts["model_type"] if facts else config.model_type
    if family not in EMBEDDERS:
        known = {**EMBEDDERS, "open_clip:ARCH@TAG": None}
        raise _unsupported(name_or_path, family, "embedder", known)
    torch_device = resolve_device(device)
    measured = family in BF16_MEASURED_HUB_EMBEDDERS
    dtype = resolve_dtype(torch_device, precision, bf16_measured=measured)
    recipe = _pixel_recipe(name_or_path, location)
    runs = resolve_backend(backend, torch_device.type)
    if family not in OPENVINO_HUB_EMBEDDERS or not isinstance(recipe, PixelRecipe):
        runs = "torch"
    embedder = HFEmbedder(name_or_path, location, config, recipe, torch_device, dtype, runs, facts)
    weight_files(name_or_path, location)  # fail now, not at the first batch, if there are none
    return embedder
