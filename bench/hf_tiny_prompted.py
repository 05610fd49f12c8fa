"""Tiny randomly initialised prompted vision-language models (LLaVA, Qwen2-VL, Qwen2.5-VL,
Idefics3 / SmolVLM, PaliGemma, BLIP-2, Florence-2, LLaVA-OneVision), built offline from configs
and saved with `save_pretrained`, so that `AutoProcessor` and
`AutoModelForImageTextToText.from_pretrained(dir)` load them like a hub download.

Each has a WordLevel tokenizer with the family's special tokens, left padding (right for the
encoder-decoder Florence-2), and (except PaliGemma, BLIP-2 and Florence-2, whose processors take
a plain prompt) a chat template that puts the image before the text, as the real checkpoints'
templates do. 32-wide, 2-layer towers; images of 32-64 px; a 10x wider initialisation than the
default so that different images give different answers.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

from bench.hf_tiny import WORDS

SEED = 0
FAMILIES = ("llava", "qwen2_vl", "qwen2_5_vl", "idefics3", "paligemma", "blip2")
#: added later; their tests are in tests/test_prompted_families.py
MORE_FAMILIES = ("florence2", "llava_onevision")
_PROMPT_WORDS = "user assistant : describe this image one sentence . ? how many yes no".split()
_INIT = 0.2
_TEXT = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=4,
    initializer_range=_INIT,
    max_position_embeddings=1024,
)
_VISION = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    image_size=32,
    patch_size=8,
    initializer_range=_INIT,
)


def _template(image: str) -> str:
    """'user : <image> TEXT assistant : ' (a turn per message, the image where it is given)."""
    return (
        "{% for message in messages %}{{ message['role'] }} : {% for c in message['content'] %}"
        "{% if c['type'] == 'image' %}" + image + " {% else %}{{ c['text'] }} {% endif %}"
        "{% endfor %}{% endfor %}{% if add_generation_prompt %}assistant : {% endif %}"
    )


def _tokenizer(specials: list[str], **named):
    """A whitespace WordLevel tokenizer: the special tokens first, then prompt words and WORDS;
    every special token registered, so decoding can skip it; left padding."""
    from transformers import PreTrainedTokenizerFast

    words = [w for w in [*_PROMPT_WORDS, *WORDS] if w not in specials]
    vocab = {t: i for i, t in enumerate(dict.fromkeys([*specials, *words]))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    listed = {v for v in named.values() if isinstance(v, str)}
    extra = [t for t in specials if t not in listed]
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        additional_special_tokens=extra,
        padding_side="left",
        **named,
    )
    return tokenizer, vocab


def _seeded(build):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        return build().eval()


def _save(path: str | Path, model, processor) -> str:
    from transformers.utils import logging

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    logging.disable_progress_bar()
    try:
        model.save_pretrained(path)
    finally:
        logging.enable_progress_bar()
    processor.save_pretrained(path)
    return str(path)


def build_tiny_llava(path: str | Path) -> str:
    """LLaVA: CLIP vision tower (32 px, patch 8, CLS kept) + Llama, <image> in the template."""
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    named = dict(pad_token="<pad>", bos_token="<s>", eos_token="</s>")
    tokenizer, vocab = _tokenizer(["<pad>", "<s>", "</s>", "<unk>", "<image>"], **named)
    text = LlamaConfig(
        **_TEXT, vocab_size=len(vocab), pad_token_id=0, bos_token_id=1, eos_token_id=2
    )
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(**_VISION),
        text_config=text,
        image_token_index=vocab["<image>"],
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
    )
    model = _seeded(lambda: LlavaForConditionalGeneration(config))
    images = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    processor = LlavaProcessor(
        image_processor=images,
        tokenizer=tokenizer,
        patch_size=8,
        vision_feature_select_strategy="full",
        num_additional_image_tokens=1,  # "full" keeps the CLS token: one more image token
        chat_template=_template("<image>"),
    )
    return _save(path, model, processor)


def build_tiny_qwen2_vl(path: str | Path) -> str:
    """Qwen2-VL: dynamic resolution (14 px patches merged 2x2), images bounded to 56x56 pixels
    by the processor's max_pixels, so a bigger image still costs 4 image tokens."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor

    vision = dict(depth=2, embed_dim=32, hidden_size=32, num_heads=4, mlp_ratio=2)
    return _build_qwen(path, Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor,
                       vision)  # fmt: skip


def build_tiny_qwen2_5_vl(path: str | Path) -> str:
    """Qwen2.5-VL: Qwen2-VL's processor and tokens, a windowed-attention vision tower."""
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
    )

    vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=4, out_hidden_size=32,
                  window_size=56, fullatt_block_indexes=[1])  # fmt: skip
    return _build_qwen(path, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration,
                       Qwen2_5_VLProcessor, vision)  # fmt: skip


def _build_qwen(path, config_cls, model_cls, processor_cls, vision: dict) -> str:
    """What Qwen2-VL and Qwen2.5-VL share: tokens, M-RoPE text model, processor and template."""
    from transformers import Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    specials = ["<pad>", "<unk>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                "<|image_pad|>", "<|video_pad|>"]  # fmt: skip
    tokenizer, vocab = _tokenizer(specials, pad_token="<pad>", eos_token="<|im_end|>")
    rope = {"rope_type": "default", "mrope_section": [2, 1, 1], "rope_theta": 10000.0}
    text = dict(
        _TEXT, num_key_value_heads=2, vocab_size=len(vocab), rope_parameters=rope,
        eos_token_id=vocab["<|im_end|>"], pad_token_id=0, bos_token_id=None,
    )  # fmt: skip
    vision = dict(vision, patch_size=14, spatial_merge_size=2, temporal_patch_size=2,
                  initializer_range=_INIT)  # fmt: skip
    config = config_cls(
        text_config=text,
        vision_config=vision,
        image_token_id=vocab["<|image_pad|>"],
        video_token_id=vocab["<|video_pad|>"],
        vision_start_token_id=vocab["<|vision_start|>"],
        vision_end_token_id=vocab["<|vision_end|>"],
    )
    model = _seeded(lambda: model_cls(config))
    processor = processor_cls(
        image_processor=Qwen2VLImageProcessor(min_pixels=28 * 28, max_pixels=56 * 56),
        video_processor=Qwen2VLVideoProcessor(),
        tokenizer=tokenizer,
        chat_template=_template("<|vision_start|><|image_pad|><|vision_end|>"),
    )
    return _save(path, model, processor)


#: Idefics3 / SmolVLM's special tokens: image markers and the tile-position tokens of a 6x6 grid
IDEFICS3_SPECIALS = ["<pad>", "<unk>", "<end_of_utterance>", "<s>", "<image>",
                     "<fake_token_around_image>", "<global-img>",
                     *(f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7))]  # fmt: skip


def build_tiny_idefics3(path: str | Path) -> str:
    """Idefics3 / SmolVLM: images split into 32 px tiles (up to 2x2) plus a global view."""
    from transformers import (
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3ImageProcessor,
        Idefics3Processor,
    )

    specials = IDEFICS3_SPECIALS
    named = dict(pad_token="<pad>", bos_token="<s>", eos_token="<end_of_utterance>")
    tokenizer, vocab = _tokenizer(specials, **named)
    text = dict(_TEXT, vocab_size=len(vocab), pad_token_id=0,
                eos_token_id=vocab["<end_of_utterance>"], bos_token_id=vocab["<s>"])  # fmt: skip
    config = Idefics3Config(
        vision_config=_VISION, text_config=text, image_token_id=vocab["<image>"], scale_factor=2
    )
    model = _seeded(lambda: Idefics3ForConditionalGeneration(config))
    images = Idefics3ImageProcessor(size={"longest_edge": 64}, max_image_size={"longest_edge": 32})
    processor = Idefics3Processor(
        image_processor=images,
        tokenizer=tokenizer,
        image_seq_len=4,  # (32 / 8)^2 patches / scale_factor^2
        chat_template=_template("<image>"),
    )
    return _save(path, model, processor)


def build_tiny_paligemma(path: str | Path) -> str:
    """PaliGemma: SigLIP tower (32 px, 16 image tokens) + Gemma; no chat template, the
    processor puts the image tokens and BOS before a plain prompt ("caption en")."""
    from transformers import (
        PaliGemmaConfig,
        PaliGemmaForConditionalGeneration,
        PaliGemmaProcessor,
        SiglipImageProcessor,
    )

    named = dict(pad_token="<pad>", eos_token="<eos>", bos_token="<bos>")
    tokenizer, vocab = _tokenizer(["<pad>", "<eos>", "<bos>", "<unk>", "<image>"], **named)
    text = dict(_TEXT, num_key_value_heads=1, head_dim=8, vocab_size=len(vocab),
                pad_token_id=0, eos_token_id=1, bos_token_id=2)  # fmt: skip
    config = PaliGemmaConfig(
        vision_config=dict(_VISION, projection_dim=32),
        text_config=text,
        image_token_id=vocab["<image>"],
        projection_dim=32,
    )
    config.vision_config.num_image_tokens = 16  # (32 / 8)^2
    model = _seeded(lambda: PaliGemmaForConditionalGeneration(config))
    images = SiglipImageProcessor(size={"height": 32, "width": 32})
    images.image_seq_length = 16
    return _save(path, model, PaliGemmaProcessor(image_processor=images, tokenizer=tokenizer))


def build_tiny_blip2(path: str | Path) -> str:
    """BLIP-2: ViT + a 4-query Q-Former + OPT; no chat template, the processor puts the query
    tokens before a plain prompt (empty by default)."""
    from transformers import (
        Blip2Config,
        Blip2ForConditionalGeneration,
        Blip2Processor,
        BlipImageProcessor,
        OPTConfig,
    )

    named = dict(pad_token="<pad>", bos_token="</s>", eos_token="</s>")
    tokenizer, vocab = _tokenizer(["<pad>", "</s>", "<unk>", "<image>"], **named)
    text = OPTConfig(
        hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4,
        word_embed_proj_dim=32, vocab_size=len(vocab), pad_token_id=0, bos_token_id=1,
        eos_token_id=1, init_std=_INIT, max_position_embeddings=256,
    )  # fmt: skip
    qformer = dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        encoder_hidden_size=32, initializer_range=_INIT,
    )  # fmt: skip
    config = Blip2Config(
        vision_config=_VISION,
        qformer_config=qformer,
        text_config=text.to_dict(),
        num_query_tokens=4,
        image_token_index=vocab["<image>"],
    )
    model = _seeded(lambda: Blip2ForConditionalGeneration(config))
    images = BlipImageProcessor(size={"height": 32, "width": 32})
    processor = Blip2Processor(image_processor=images, tokenizer=tokenizer, num_query_tokens=4)
    return _save(path, model, processor)


def build_tiny_florence2(path: str | Path) -> str:
    """Florence-2: DaViT tower (64 px, 4 stages: 2x2 spatial tokens + 1 temporal = 5 image
    tokens) + BART encoder-decoder; no chat template: the processor turns a task token
    (<CAPTION>, ...) into its question and puts the image tokens and <s> before any text."""
    from transformers import (
        CLIPImageProcessor,
        Florence2Config,
        Florence2ForConditionalGeneration,
        Florence2Processor,
    )

    named = dict(pad_token="<pad>", bos_token="<s>", eos_token="</s>")
    image = {"image_token": "<image>"}  # the processor reads tokenizer.image_token
    specials = ["<pad>", "<s>", "</s>", "<unk>", "<image>"]
    tokenizer, vocab = _tokenizer(specials, extra_special_tokens=image, **named)
    tokenizer.padding_side = "right"  # an encoder's input: its positions start at the first token
    text = dict(d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64,
                vocab_size=len(vocab), max_position_embeddings=256, init_std=_INIT, pad_token_id=0,
                bos_token_id=1, eos_token_id=2, decoder_start_token_id=2)  # fmt: skip
    vision = dict(embed_dim=(8, 16, 16, 32), depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 4),
                  num_groups=(1, 2, 2, 4), projection_dim=32, initializer_range=_INIT)  # fmt: skip
    config = Florence2Config(text_config=text, vision_config=vision,
                             image_token_id=vocab["<image>"], initializer_range=_INIT)  # fmt: skip
    model = _seeded(lambda: Florence2ForConditionalGeneration(config))
    images = CLIPImageProcessor(size={"height": 64, "width": 64}, do_center_crop=False,
                                crop_size={"height": 64, "width": 64})  # fmt: skip
    images.image_seq_length = 5
    return _save(path, model, Florence2Processor(image_processor=images, tokenizer=tokenizer))


def build_tiny_llava_onevision(path: str | Path) -> str:
    """LLaVA-OneVision: SigLIP tower (32 px, patch 8: 16 tokens per view) + Qwen2; "anyres":
    an image becomes a base view plus up to 2x2 tiles of 32 px (pinpoints up to 64x64), the
    tiles' features unpadded to the image's aspect ratio with a newline token per row."""
    from transformers import (
        LlavaOnevisionConfig,
        LlavaOnevisionForConditionalGeneration,
        LlavaOnevisionImageProcessor,
        LlavaOnevisionProcessor,
        LlavaOnevisionVideoProcessor,
    )

    specials = ["<pad>", "<unk>", "<|im_end|>", "<image>", "<video>"]
    tokenizer, vocab = _tokenizer(specials, pad_token="<pad>", eos_token="<|im_end|>")
    text = dict(_TEXT, model_type="qwen2", vocab_size=len(vocab), pad_token_id=0,
                eos_token_id=vocab["<|im_end|>"], bos_token_id=None)  # fmt: skip
    pinpoints = [[32, 32], [32, 64], [64, 32], [64, 64]]
    config = LlavaOnevisionConfig(
        vision_config=dict(_VISION, model_type="siglip_vision_model", vision_use_head=False),
        text_config=text,
        image_token_index=vocab["<image>"],
        video_token_index=vocab["<video>"],
        image_grid_pinpoints=pinpoints,
        vision_aspect_ratio="anyres_max_9",
        initializer_range=_INIT,
    )
    model = _seeded(lambda: LlavaOnevisionForConditionalGeneration(config))
    images = LlavaOnevisionImageProcessor(
        size={"height": 32, "width": 32}, image_grid_pinpoints=pinpoints
    )
    processor = LlavaOnevisionProcessor(
        image_processor=images,
        tokenizer=tokenizer,
        video_processor=LlavaOnevisionVideoProcessor(size={"height": 32, "width": 32}),
        num_image_tokens=16,
        vision_feature_select_strategy="full",
        chat_template=_template("<image>"),
    )
    return _save(path, model, processor)


def build(family: str, path: str | Path) -> str:
    return globals()[f"build_tiny_{family}"](path)
