"""Model families at full size (published architectures, random weights) or tiny, built offline.

No hub here: each builder writes a directory (or checkpoint file) from a config written below,
with the published checkpoint's layer sizes, vocabulary size and image preprocessing, so a forward
pass costs what the real model's does. Tokenizers are WordLevel over the real vocabulary size
with the family's special tokens (random weights emit random ids; every id decodes). `tiny=True`
keeps the family's structure at 32-wide, 2-layer sizes: the smoke mode and tests use those.

Random weights never emit an end token, so every caption runs to the token bound: caption figures
are an upper bound on the real cost of a caption of that length.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

from bench import hf_tiny, hf_tiny_prompted, openclip_tiny

_TINY_TEXT = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=4, max_position_embeddings=1024,
)  # fmt: skip
_TINY_VISION = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
    image_size=32, patch_size=8,
)  # fmt: skip


def _tokenizer(specials: list[str], size: int | None, template: str | None = None, **named):
    """WordLevel: special tokens at ids 0.., then words, then fillers up to `size` ids; left
    padding (batched generation), a chat template where the family has one."""
    from transformers import PreTrainedTokenizerFast

    words = [w for w in hf_tiny.WORDS if w not in specials]
    tokens = [*specials, *words]
    tokens += [f"w{i}" for i in range(len(tokens), size or len(tokens))]
    vocab = {t: i for i, t in enumerate(tokens)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    listed = {v for v in named.values() if isinstance(v, str)}
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        additional_special_tokens=[t for t in specials if t not in listed and t != "<unk>"],
        padding_side="left",
        chat_template=template,
        **named,
    )
    return tokenizer, vocab


def _build(cls, config, dtype: torch.dtype):
    """Random weights straight in `dtype` (a 2.7B model in bf16 never exists in fp32)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return cls._from_config(config, dtype=dtype).eval()


def _save(path: str | Path, model, processor) -> str:
    from transformers.utils import logging

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    logging.disable_progress_bar()
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return str(path)


def build_blip_clip(path: Path, tiny: bool, dtype: torch.dtype) -> tuple[str, str]:
    """The reference pair: BLIP-base captioner + CLIP ViT-B/32 embedder (bench/hf_tiny.py)."""
    if tiny:
        return hf_tiny.build_tiny_blip(path / "blip"), hf_tiny.build_tiny_clip(path / "clip")
    return (
        hf_tiny.build_full_size_blip_base(path / "blip"),
        hf_tiny.build_full_size_clip_b32(path / "clip"),
    )


def build_open_clip(path: Path, tiny: bool, dtype: torch.dtype) -> str:
    """open_clip ViT-L-14 (LAION's most used size) as a .safetensors checkpoint."""
    import open_clip
    from safetensors.torch import save_file

    if tiny:
        # the folder form: a measuring child knows the tiny architecture from its config file
        return f"open_clip:local-dir:{openclip_tiny.build_tiny_open_clip(path)['folder']}"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = open_clip.create_model("ViT-L-14")
    path.mkdir(parents=True, exist_ok=True)
    state = {k: v.to(dtype).contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path / "vit_l_14.safetensors"))
    return f"open_clip:ViT-L-14@{path / 'vit_l_14.safetensors'}"


def build_siglip2(path: Path, tiny: bool, dtype: torch.dtype) -> str:
    """SigLIP 2 base, NaFlex (google/siglip2-base-patch16-naflex: 768 wide, 12 layers, up to
    256 patches of 16 px, Gemma's 256k vocabulary)."""
    if tiny:
        return hf_tiny.build_tiny_siglip2(path)
    from transformers import Siglip2Config, Siglip2ImageProcessor, Siglip2Model, Siglip2Processor

    tokenizer, vocab = _tokenizer(["<pad>", "<eos>", "<unk>"], 256000, pad_token="<pad>",
                                  eos_token="<eos>")  # fmt: skip
    tokenizer.model_input_names = ["input_ids", "attention_mask"]
    ids = dict(pad_token_id=0, eos_token_id=1, bos_token_id=1)
    config = Siglip2Config(text_config=dict(vocab_size=256000, **ids), vision_config={})
    processor = Siglip2Processor(image_processor=Siglip2ImageProcessor(), tokenizer=tokenizer)
    return _save(path, _build(Siglip2Model, config, dtype), processor)


def build_smolvlm(path: Path, tiny: bool, dtype: torch.dtype) -> str:
    """SmolVLM-256M-Instruct's architecture (Idefics3: SigLIP 512 px tiles, 64 tokens per tile
    after a 4x pixel shuffle, a 30-layer 576-wide Llama, 49280 tokens); its processor splits an
    image into 512 px tiles up to 2048 px plus a global view, as the real one does."""
    if tiny:
        return hf_tiny_prompted.build_tiny_idefics3(path)
    from transformers import (
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3ImageProcessor,
        Idefics3Processor,
    )

    specials = hf_tiny_prompted.IDEFICS3_SPECIALS
    tokenizer, vocab = _tokenizer(
        specials, 49280, hf_tiny_prompted._template("<image>"),
        pad_token="<pad>", bos_token="<s>", eos_token="<end_of_utterance>",
    )  # fmt: skip
    text = dict(model_type="llama", hidden_size=576, intermediate_size=1536,
                num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                vocab_size=49280, max_position_embeddings=8192, rope_theta=100000.0,
                tie_word_embeddings=True, pad_token_id=0, bos_token_id=vocab["<s>"],
                eos_token_id=vocab["<end_of_utterance>"])  # fmt: skip
    vision = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                  num_attention_heads=12, image_size=512, patch_size=16)  # fmt: skip
    config = Idefics3Config(vision_config=vision, text_config=text, scale_factor=4,
                            image_token_id=vocab["<image>"])  # fmt: skip
    images = Idefics3ImageProcessor(
        size={"longest_edge": 2048}, max_image_size={"longest_edge": 512}
    )
    processor = Idefics3Processor(image_processor=images, tokenizer=tokenizer, image_seq_len=64,
                                  chat_template=tokenizer.chat_template)  # fmt: skip
    return _save(path, _build(Idefics3ForConditionalGeneration, config, dtype), processor)


def build_qwen2_vl(path: Path, tiny: bool, dtype: torch.dtype) -> str:
    """Qwen2-VL-2B-Instruct's architecture (a 32-layer 1280-wide ViT merging 2x2 patches of
    14 px, a 28-layer 1536-wide Qwen2, 151936 tokens); images bounded to 448x448 pixels (256
    image tokens) by the processor's max_pixels, a bound a batch job sets."""
    if tiny:
        return hf_tiny_prompted.build_tiny_qwen2_vl(path)
    from transformers import (
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
    )

    specials = ["<pad>", "<unk>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                "<|image_pad|>", "<|video_pad|>"]  # fmt: skip
    template = hf_tiny_prompted._template("<|vision_start|><|image_pad|><|vision_end|>")
    tokenizer, vocab = _tokenizer(specials, 151936, template, pad_token="<pad>",
                                  eos_token="<|im_end|>")  # fmt: skip
    rope = {"rope_type": "default", "mrope_section": [16, 24, 24], "rope_theta": 1000000.0}
    text = dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                num_attention_heads=12, num_key_value_heads=2, vocab_size=151936,
                max_position_embeddings=32768, rope_parameters=rope, tie_word_embeddings=True,
                eos_token_id=vocab["<|im_end|>"], pad_token_id=0, bos_token_id=None)  # fmt: skip
    vision = dict(depth=32, embed_dim=1280, hidden_size=1536, num_heads=16, mlp_ratio=4,
                  patch_size=14, spatial_merge_size=2, temporal_patch_size=2)  # fmt: skip
    config = Qwen2VLConfig(
        text_config=text, vision_config=vision, image_token_id=vocab["<|image_pad|>"],
        video_token_id=vocab["<|video_pad|>"], vision_start_token_id=vocab["<|vision_start|>"],
        vision_end_token_id=vocab["<|vision_end|>"], tie_word_embeddings=True,
    )  # fmt: skip
    processor = Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=448 * 448),
        video_processor=Qwen2VLVideoProcessor(),
        tokenizer=tokenizer,
        chat_template=template,
    )
    return _save(path, _build(Qwen2VLForConditionalGeneration, config, dtype), processor)


def build_blip2(path: Path, tiny: bool, dtype: torch.dtype) -> str:
    """BLIP-2 OPT-2.7b's architecture (EVA ViT-g 39 layers at 224 px, a 12-layer Q-Former with
    32 queries, OPT-2.7b: 32 layers, 2560 wide, 50272 tokens); captions unprompted."""
    from transformers import (
        Blip2Config,
        Blip2ForConditionalGeneration,
        Blip2Processor,
        BlipImageProcessor,
        OPTConfig,
    )

    size = None if tiny else 50272
    named = dict(pad_token="<pad>", bos_token="</s>", eos_token="</s>")
    tokenizer, vocab = _tokenizer(["<pad>", "</s>", "<unk>", "<image>"], size, **named)
    ids = dict(pad_token_id=0, bos_token_id=1, eos_token_id=1)
    queries = 4 if tiny else 32
    if tiny:
        text = OPTConfig(hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4,
                         word_embed_proj_dim=32, vocab_size=len(vocab), **ids)  # fmt: skip
        vision = dict(_TINY_VISION)
        qformer = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, encoder_hidden_size=32)  # fmt: skip
    else:
        text = OPTConfig(hidden_size=2560, ffn_dim=10240, num_hidden_layers=32,
                         num_attention_heads=32, word_embed_proj_dim=2560, vocab_size=50272,
                         max_position_embeddings=2048, **ids)  # fmt: skip
        vision, qformer = {}, {}  # the defaults are BLIP-2's ViT-g and Q-Former
    config = Blip2Config(vision_config=vision, qformer_config=qformer,
                         text_config=text.to_dict(), num_query_tokens=queries,
                         image_token_index=vocab["<image>"])  # fmt: skip
    px = 32 if tiny else 224
    images = BlipImageProcessor(size={"height": px, "width": px})
    processor = Blip2Processor(image_processor=images, tokenizer=tokenizer,
                               num_query_tokens=queries)  # fmt: skip
    return _save(path, _build(Blip2ForConditionalGeneration, config, dtype), processor)


def build_florence2(path: Path, tiny: bool, dtype: torch.dtype) -> str:
    """Florence-2-base's architecture (DaViT 768 px, 577 image tokens, BART-base 6+6 layers,
    51289 tokens), asked vlpipe's default Florence-2 task (<CAPTION> since issue 22's last
    part; <MORE_DETAILED_CAPTION> when models_cpu first timed it: 5 more prompt tokens beside
    577 image tokens, and random weights run every caption to the token bound either way)."""
    if tiny:
        return hf_tiny_prompted.build_tiny_florence2(path)
    from transformers import (
        CLIPImageProcessor,
        Florence2Config,
        Florence2ForConditionalGeneration,
        Florence2Processor,
    )

    specials = ["<pad>", "<s>", "</s>", "<unk>", "<image>", "<more_detailed_caption>"]
    tokenizer, vocab = _tokenizer(specials, 51289, pad_token="<pad>", bos_token="<s>",
                                  eos_token="</s>",
                                  extra_special_tokens={"image_token": "<image>"})  # fmt: skip
    ids = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=2)
    text = dict(d_model=768, encoder_layers=6, decoder_layers=6, encoder_attention_heads=12,
                decoder_attention_heads=12, encoder_ffn_dim=3072, decoder_ffn_dim=3072,
                vocab_size=51289, max_position_embeddings=1024, **ids)  # fmt: skip
    vision = dict(projection_dim=768)  # the default DaViT is Florence-2-base's
    config = Florence2Config(text_config=text, vision_config=vision,
                             image_token_id=vocab["<image>"])  # fmt: skip
    images = CLIPImageProcessor(size={"height": 768, "width": 768}, do_center_crop=False,
                                crop_size={"height": 768, "width": 768})  # fmt: skip
    images.image_seq_length = 577
    processor = Florence2Processor(image_processor=images, tokenizer=tokenizer)
    return _save(path, _build(Florence2ForConditionalGeneration, config, dtype), processor)


def describe(path: str) -> dict:
    """Parameter count of a built directory (from its safetensors headers: nothing loaded)."""
    from safetensors import safe_open

    folder = Path(path.split("@", 1)[-1].removeprefix("open_clip:local-dir:"))
    files = [folder] if folder.is_file() else sorted(folder.glob("*.safetensors"))
    params = 0
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():
                params += int(torch.tensor(f.get_slice(key).get_shape()).prod())
    return {"params_m": round(params / 1e6, 1), "files": [str(f) for f in files]}
