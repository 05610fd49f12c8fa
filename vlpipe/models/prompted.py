"""Prompted captioners: any vision-language model that transformers loads with
`AutoModelForImageTextToText` + `AutoProcessor` (LLaVA, Qwen2-VL, SmolVLM / Idefics3, PaliGemma,
BLIP-2, Florence-2, ...), asked a prompt per image, and extra questions (`--ask`) in the same pass.

How a batch runs: `preprocess` (decode threads) only bounds the image's pixel count, so a huge
photo cannot blow a batch of a dynamic-resolution model (Qwen2-VL turns every 28x28 pixels into a
token); the model's own processor then builds the whole batch in one call, the prompt put through
its chat template when it has one, the text left-padded (right-padded for an encoder-decoder
such as Florence-2, whose encoder numbers positions from the first token), and one `generate`
call (greedy unless beams are asked for) makes every answer of the batch. Only the new tokens
are decoded, without special tokens, so no prompt text leaks into a caption. Calling the
processor on the batch, rather than re-implementing each family's image tokens, is what makes
vlpipe's output equal a plain `model.generate` on the processor's output, token for token
(tests/test_prompted_models.py, tests/test_prompted_families.py).

A prompt the processor refuses (Florence-2: a task token such as <CAPTION> with other text) is
refused in one line at planning (vlpipe.models.describe) or when `vlpipe ask` gets the question,
by running the processor on a blank image (`check_prompts`), not as a failure row per image.

Questions: every image of a batch is decoded and preprocessed once (`preprocess`, one PIL image
per row) and goes through the image processor once for all its prompts (prompted_batch.py); each
(image, prompt) pair is one sequence of the same `generate` call, and for the families in
SHARED_VISION the vision tower encodes each image once for all of them.
"""

from __future__ import annotations

import math
import threading

import torch
from PIL import Image

from vlpipe.errors import VlpipeError
from vlpipe.models.base import Captioner, resolve_device, resolve_dtype
from vlpipe.models.hf_load import from_pretrained, place, quiet
from vlpipe.models.prompted_batch import image_processor_once, merge_batches, vision_once
from vlpipe.models.prompting import Prompting, settings_fingerprint

#: processors that insert a model's image tokens themselves when the text has none
SELF_INSERTING = frozenset({"paligemma", "blip-2", "instructblip", "florence2"})
#: shortest image side decode keeps when the processor says nothing usable
FALLBACK_IMAGE_SIZE = 448
#: side of the blank image a prompt is tried on (check_prompts)
CHECK_IMAGE_SIZE = 64


def prompted_families(classic: set[str] | frozenset[str]) -> list[str]:
    """Every model_type transformers maps to AutoModelForImageTextToText, less the classic
    captioners vlpipe runs unprompted (BLIP, GIT, VisionEncoderDecoder)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    return sorted(set(MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES) - set(classic))


class PromptedCaptioner(Captioner):
    """A prompt per image through the model's processor and one batched `generate`."""

    takes_prompts = True

    def __init__(
        self,
        name: str,
        model,
        processor,
        device: torch.device,
        dtype: torch.dtype,
        prompting: Prompting,
        max_tokens: int = 30,
    ):
        self.name, self.model, self.processor = name, model, processor
        self.family = model.config.model_type
        self.device, self.dtype = device, dtype
        self.prompting, self.max_tokens = prompting, max_tokens
        self.prompt = prompting.prompt_for(self.family)
        self.tokenizer = processor.tokenizer
        # a decoder generates after the padding; an encoder's positions start at the first token
        self.padding_side = "right" if model.config.is_encoder_decoder else "left"
        self.tokenizer.padding_side = self.padding_side
        self.max_pixels = bound_image_tokens(processor, prompting.max_image_pixels)
        self.image_size = image_size(processor, self.max_pixels)
        self._lock = threading.Lock()  # a Rust tokenizer is not re-entrant
        self._vision_lock = threading.Lock()  # vision_once patches the model for one call
        config = model.generation_config
        if config.pad_token_id is None:
            pad = self.tokenizer.pad_token_id
            config.pad_token_id = pad if pad is not None else self.tokenizer.eos_token_id

    # --- the Captioner interface ------------------------------------------------------------------

    def preprocess(self, image: Image.Image) -> Image.Image:
        """The image as the processor will see it: RGB, scaled down to at most max_pixels."""
        image = image if image.mode == "RGB" else image.convert("RGB")
        w, h = image.size
        if self.max_pixels and w * h > self.max_pixels:
            scale = math.sqrt(self.max_pixels / (w * h))
            image = image.resize((max(1, int(w * scale)), max(1, int(h * scale))), Image.BICUBIC)
        return image

    def collate(self, items: list) -> list[Image.Image]:
        """Images of different sizes cannot stack; the processor takes the list."""
        return list(items)

    def caption(self, pixels, max_tokens: int | None = None) -> list[str]:
        return self.generate(list(pixels), [self.prompt] * len(pixels), max_tokens)

    def answers(
        self, images: list[Image.Image], prompts: list[str], max_tokens: int | None = None
    ) -> list[list[str]]:
        """For each image, one answer per prompt, all in one generate call; each image was
        decoded and preprocessed once, and goes through the image processor once for all the
        prompts (vlpipe.models.prompted_batch)."""
        inputs = self.inputs_per_prompt(images, prompts)
        with self._vision_lock, vision_once(self.model, len(prompts)):
            texts = self._decode(self._generate(inputs, max_tokens))
        b = len(images)
        return [[texts[j * b + i] for j in range(len(prompts))] for i in range(b)]

    def inputs_per_prompt(self, images: list[Image.Image], prompts: list[str]) -> dict:
        """One batch of every prompt with every image, prompt-major (row j * len(images) + i
        pairs prompt j with image i), the images through the image processor once."""
        if len(prompts) == 1:
            return self.inputs(images, prompts * len(images))
        texts = [self.text_for(p) for p in prompts]
        with self._lock, quiet(), image_processor_once(self.processor):
            parts = [self._process(images, [t] * len(images)) for t in texts]
        pad = self.tokenizer.pad_token_id
        merged = merge_batches(parts, pad if pad is not None else 0, self.padding_side)
        return self._on_device(merged)

    def check_prompts(self, prompts: list[str]) -> None:
        with self._lock:
            check_prompts(self.name, self.processor, self.family, prompts)

    def candidates(self, pixels, n: int, max_tokens: int | None = None) -> list[list[str]]:
        """n captions per image: the n best beams of a width-n beam search."""
        images = list(pixels)
        ids = self.generate_ids(images, [self.prompt] * len(images), max_tokens, beams=n)
        texts = self._decode(ids)
        return [texts[i * n : (i + 1) * n] for i in range(len(images))]

    def generate(
        self, images: list[Image.Image], prompts: list[str], max_tokens: int | None = None
    ) -> list[str]:
        """One text per (image, prompt) pair, greedy."""
        return self._decode(self.generate_ids(images, prompts, max_tokens))

    def generate_ids(
        self,
        images: list[Image.Image],
        prompts: list[str],
        max_tokens: int | None = None,
        beams: int = 1,
    ) -> list[list[int]]:
        """The new token ids of each (image, prompt) pair's sequence (prompt and padding cut
        off); with beams > 1, `beams` sequences per pair, best first."""
        return self._generate(self.inputs(images, prompts), max_tokens, beams)

    def _generate(self, inputs: dict, max_tokens: int | None, beams: int = 1) -> list[list[int]]:
        with torch.inference_mode():
            out = self.model.generate(
                **inputs,
                do_sample=False,
                num_beams=beams,
                num_return_sequences=beams,
                max_new_tokens=max_tokens or self.max_tokens,
            )
        start = 0 if self.model.config.is_encoder_decoder else inputs["input_ids"].shape[1]
        return [row[start:].tolist() for row in out.cpu()]

    def inputs(self, images: list[Image.Image], prompts: list[str]) -> dict:
        """The processor's batch for these (image, prompt) pairs, on the model's device."""
        texts = [self.text_for(p) for p in prompts]
        with self._lock, quiet():
            return self._on_device(self._process(images, texts))

    def _process(self, images: list[Image.Image], texts: list[str]) -> dict:
        batch = self.processor(images=images, text=texts, padding=True, return_tensors="pt")
        batch.pop("labels", None)  # PaliGemma's processor adds them; generate needs none
        return dict(batch)

    def _on_device(self, batch: dict) -> dict:
        return {
            k: v.to(self.device, self.dtype if v.is_floating_point() else None)
            for k, v in batch.items()
        }

    def text_for(self, prompt: str) -> str:
        return prompt_text(self.processor, self.family, prompt)

    def _decode(self, ids: list[list[int]]) -> list[str]:
        with self._lock:
            texts = self.tokenizer.batch_decode(ids, skip_special_tokens=True)
        return [t.strip() for t in texts]

    def describe(self) -> dict:
        return {
            "family": self.family,
            "name_or_path": self.name,
            "kind": "prompted",
            "dtype": str(self.dtype).removeprefix("torch."),
            "image_size": self.image_size,
            "max_image_pixels": self.max_pixels,
            **self.prompting.describe(self.family),
            "decoding": "greedy",
            "fingerprint": settings_fingerprint(
                self.family, self.name, self.prompting, {"decoding": "greedy"}
            ),
        }


def prompt_text(processor, family: str, prompt: str) -> str:
    """The prompt through the chat template (one user turn: the image, then the text), or as
    given with the image token first where the processor does not insert it."""
    if getattr(processor, "chat_template", None):
        turn = [{"type": "image"}, {"type": "text", "text": prompt}]
        conversation = [{"role": "user", "content": turn}]
        return processor.apply_chat_template(conversation, add_generation_prompt=True)
    token = getattr(processor, "image_token", None)
    if family in SELF_INSERTING or not token or token in prompt:
        return prompt
    return f"{token}\n{prompt}"


def check_prompts(name: str, processor, family: str, prompts: list[str]) -> None:
    """One line for a prompt the processor will not take (Florence-2: a task token such as
    <CAPTION> must be the whole prompt), found by running the processor on a blank image: no
    weights needed, so a run refuses it at planning and `vlpipe ask` before reading any image."""
    blank = Image.new("RGB", (CHECK_IMAGE_SIZE, CHECK_IMAGE_SIZE), (127, 127, 127))
    for prompt in prompts:
        try:
            with quiet():
                processor(images=[blank], text=[prompt_text(processor, family, prompt)],
                          return_tensors="pt")  # fmt: skip
        except (ValueError, TypeError, KeyError) as exc:
            why = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise VlpipeError(
                f"{name!r} ({family}) cannot take the prompt {prompt!r}: {why}"
            ) from exc


def load_prompt_processor(name: str, location: str | None):
    """The checkpoint's processor (no weights), refused in one line when it has no tokenizer."""
    import transformers

    processor = from_pretrained(name, transformers.AutoProcessor.from_pretrained, location)
    if not hasattr(processor, "tokenizer"):
        raise VlpipeError(
            f"cannot load model {name!r}: its processor ({type(processor).__name__}) has no "
            "tokenizer, so it cannot take a prompt"
        )
    return processor


def bound_image_tokens(processor, max_image_pixels: int | None) -> int | None:
    """The pixel bound per image: the one asked for (also set on a dynamic-resolution
    processor, so it makes no more image tokens than that many pixels give), else a dynamic
    processor's own (Qwen2-VL's max_pixels); None for fixed-size processors left alone."""
    image_processor = getattr(processor, "image_processor", None)
    size = getattr(image_processor, "size", None)
    dynamic = size is not None and is_dynamic(image_processor)
    if max_image_pixels is None:
        own = _field(size, "longest_edge") if dynamic else None
        return int(own) if own else None
    if dynamic:
        _set_field(size, "longest_edge", max_image_pixels)
        if (_field(size, "shortest_edge") or 0) > max_image_pixels:
            _set_field(size, "shortest_edge", max_image_pixels)
    return max_image_pixels


def is_dynamic(image_processor) -> bool:
    """Qwen2-VL-style processors resize to a pixel budget (size.longest_edge is max_pixels)."""
    return hasattr(image_processor, "merge_size") and hasattr(
        image_processor, "temporal_patch_size"
    )


def _field(size, key: str):
    return size.get(key) if isinstance(size, dict) else getattr(size, key, None)


def _set_field(size, key: str, value: int) -> None:
    if isinstance(size, dict):
        size[key] = value
    else:
        setattr(size, key, value)


def image_size(processor, max_pixels: int | None) -> int:
    """The shortest side decode must keep (it drafts JPEGs down to it): an "anyres" processor
    (LLaVA-NeXT, LLaVA-OneVision) tiles an image up to its largest grid pinpoint, so it keeps
    that pinpoint's shorter side, not the base view's size."""
    if max_pixels:
        return max(1, int(math.sqrt(max_pixels)))
    image_processor = getattr(processor, "image_processor", None)
    pinpoints = getattr(image_processor, "image_grid_pinpoints", None)
    if pinpoints:
        return max(min(p) for p in pinpoints)
    size = getattr(image_processor, "size", None) or {}
    for key in ("height", "shortest_edge", "longest_edge"):
        if _field(size, key):
            return int(_field(size, key))
    return FALLBACK_IMAGE_SIZE


def load_prompted_captioner(
    name: str,
    location: str,
    device: str = "auto",
    precision: str = "auto",
    prompting: Prompting | None = None,
    max_tokens: int = 30,
) -> PromptedCaptioner:
    """The processor and model of a checkpoint (hub id or directory), ready to generate."""
    import transformers

    prompting = prompting or Prompting()
    if prompting.max_image_pixels is not None and prompting.max_image_pixels < 1:
        raise VlpipeError("--max-image-pixels must be at least 1")
    torch_device = resolve_device(device)
    dtype = resolve_dtype(torch_device, precision)
    processor = load_prompt_processor(name, location)
    loader = transformers.AutoModelForImageTextToText.from_pretrained
    model = place(from_pretrained(name, loader, location), torch_device, dtype)
    return PromptedCaptioner(name, model, processor, torch_device, dtype, prompting, max_tokens)
