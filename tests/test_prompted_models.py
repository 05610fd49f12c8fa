"""Prompted captioners on tiny random models built offline: token-for-token parity with a plain
`model.generate`, several questions sharing one image-processor and one vision pass, default
prompts and chat templates, the pixel bound of dynamic-resolution families."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from bench.hf_tiny_prompted import FAMILIES
from tests.helpers.prompted import (
    assert_captions_decode,
    count_image_processor_calls,
    count_vision_passes,
    small_images,
)
from vlpipe.errors import VlpipeError
from vlpipe.models.prompted import PromptedCaptioner
from vlpipe.models.prompting import Prompting
from vlpipe.models.registry import load_captioner


def plain_prompt(processor, family: str, prompt: str) -> str:
    if not getattr(processor, "chat_template", None):  # PaliGemma, BLIP-2: the processor
        return prompt  # inserts the image tokens itself
    turn = [{"type": "image"}, {"type": "text", "text": prompt}]
    return processor.apply_chat_template(
        [{"role": "user", "content": turn}], add_generation_prompt=True
    )


@pytest.mark.parametrize("family", FAMILIES)
def test_caption_equals_plain_generate_token_for_token(family, prompted_dirs):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    cap = load_captioner(prompted_dirs[family], device="cpu")
    assert isinstance(cap, PromptedCaptioner)
    images = small_images()
    pixels = cap.collate([cap.preprocess(im) for im in images])
    ours = cap.generate_ids(pixels, [cap.prompt] * len(images), max_tokens=8)

    processor = AutoProcessor.from_pretrained(prompted_dirs[family])
    processor.tokenizer.padding_side = "left"
    model = AutoModelForImageTextToText.from_pretrained(prompted_dirs[family]).eval()
    text = plain_prompt(processor, family, cap.prompt)
    inputs = processor(images=images, text=[text] * len(images), padding=True, return_tensors="pt")
    inputs.pop("labels", None)
    with torch.inference_mode():
        out = model.generate(**inputs, do_sample=False, max_new_tokens=8)
    theirs = out[:, inputs["input_ids"].shape[1] :].tolist()
    assert ours == theirs
    assert len({tuple(t) for t in theirs}) > 1  # the images give different answers

    assert_captions_decode(cap, pixels, processor.tokenizer, theirs)


@pytest.mark.parametrize("family", FAMILIES)
def test_questions_share_one_image_processor_pass(family, prompted_dirs, monkeypatch):
    """Several prompts per image: one batch equal, tensor for tensor, to the processor's own
    over every (image, prompt) pair (BLIP-2: the same unpadded tokens), made with one pass of
    the image processor; each image's answers are what it gets alone."""
    cap = load_captioner(prompted_dirs[family], device="cpu")
    images = small_images()
    prompts = [cap.prompt, "How many?", "Is there any text in this image?"]
    pairs = [(im, p) for p in prompts for im in images]  # prompt-major
    reference = cap.inputs([im for im, _ in pairs], [p for _, p in pairs])

    calls = count_image_processor_calls(monkeypatch, cap)
    merged = cap.inputs_per_prompt(images, prompts)
    assert len(calls) == 1
    assert merged.keys() == reference.keys()
    ours, theirs = merged["attention_mask"].bool(), reference["attention_mask"].bool()
    for key, tensor in reference.items():
        assert merged[key].shape == tensor.shape, key
        if family == "blip2" and tensor.shape == ours.shape:  # its processor pads between the
            for i in range(len(tensor)):  # query tokens and the text: the same tokens remain
                assert torch.equal(merged[key][i][ours[i]], tensor[i][theirs[i]]), key
        else:
            assert torch.equal(merged[key], tensor), key
    answers = cap.answers(images, prompts, max_tokens=4)
    alone = [cap.generate([images[1]], [p], max_tokens=4)[0] for p in prompts]
    assert answers[1] == alone


@pytest.mark.parametrize("family", FAMILIES)
def test_questions_share_one_vision_pass(family, prompted_dirs, monkeypatch):
    """The vision tower encodes each image once for all its prompts (the families in
    SHARED_VISION), and the answers are the same as when every sequence encodes its own copy."""
    from vlpipe.models import prompted_batch

    cap = load_captioner(prompted_dirs[family], device="cpu")
    images = small_images()
    prompts = [cap.prompt, "How many?", "Is there any text in this image?"]
    inner = getattr(cap.model, "model", None)
    encoded = [] if inner is None else count_vision_passes(monkeypatch, type(inner))
    shared = cap.answers(images, prompts, max_tokens=5)
    monkeypatch.setattr(prompted_batch, "SHARED_VISION", frozenset())
    each = cap.answers(images, prompts, max_tokens=5)
    assert shared == each
    if family != "blip2":  # BLIP-2 encodes every copy (not in SHARED_VISION)
        assert len(encoded) == 2 and encoded[1] == 3 * encoded[0]  # 1 pass, then 3


def test_default_prompts_and_chat_templates(prompted_dirs):
    llava = load_captioner(prompted_dirs["llava"], device="cpu")
    assert llava.prompt == "Describe this image in one sentence."
    assert llava.text_for("Is it red?") == "user : <image> Is it red? assistant : "
    paligemma = load_captioner(prompted_dirs["paligemma"], device="cpu")
    assert paligemma.prompt == "caption en" and paligemma.text_for("caption en") == "caption en"
    asked = load_captioner(
        prompted_dirs["llava"], device="cpu", prompting=Prompting(prompt="Tags?")
    )
    assert asked.prompt == "Tags?"


def test_max_image_pixels_bounds_dynamic_resolution_tokens(prompted_dirs):
    big = Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 290, 3), np.uint8))
    default = load_captioner(prompted_dirs["qwen2_vl"], device="cpu")
    assert default.max_pixels == 56 * 56  # the processor's own max_pixels
    image = default.preprocess(big)
    assert image.size[0] * image.size[1] <= 56 * 56
    assert default.inputs([image], ["hi"])["image_grid_thw"].tolist() == [[1, 4, 4]]

    bound = 28 * 28 * 16
    wider = load_captioner(
        prompted_dirs["qwen2_vl"], device="cpu", prompting=Prompting(max_image_pixels=bound)
    )
    image = wider.preprocess(big)
    assert image.size[0] * image.size[1] <= bound
    assert wider.inputs([image], ["hi"])["image_grid_thw"].tolist() == [[1, 8, 8]]
    assert wider.image_size == int(bound**0.5)  # decode drafts JPEGs down to this


def test_prompted_settings_parse():
    from vlpipe.models.prompting import parse_asks

    assert parse_asks(["has_text=Is there text? Answer yes=1 or no"]) == (
        ("has_text", "Is there text? Answer yes=1 or no"),
    )
    with pytest.raises(VlpipeError):
        parse_asks(["1bad=Why?"])
