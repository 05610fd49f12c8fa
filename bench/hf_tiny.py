"""Randomly initialised transformers checkpoints, built offline and saved with `save_pretrained`.

No model hub is reachable on our machines, so the transformers path is exercised with checkpoints
built here: tiny ones (32 wide, 2 layers, 64 px) for tests and the demo fallback, and full-size
BLIP-base / CLIP ViT-B/32 architectures (random weights) for honest GPU cost measurements. Each
builder writes a directory that `from_pretrained` (and vlpipe's registry) loads like a hub download,
and returns its path. A fixed seed makes a builder give the same weights on every call.

Shared by the tests and the benchmarks, so it lives in bench/ (which imports no test module): both
(run from the repository root) import it as `bench.hf_tiny`.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
from collections.abc import Callable
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

SEED = 0
TINY_PX = 64

# Enough words that random captions read like words; captions are random anyway.
WORDS = (
    "a an the dog dogs cat man woman boy girl child children people person player "
    "is are in on at with of and to near by runs running jumps jumping sits sitting stands "
    "standing walks walking plays playing rides riding holding wearing looking "
    "red blue green black white brown yellow small large young two three "
    "grass water snow beach street field park road wall ball bike car shirt hat air sand "
    "rock tree building crowd sofa table picture front"
).split()

# A 10x wider initialisation than the default 0.02 lets the image reach the output: captions and
# embeddings of different images differ, so tests can tell images (and batch rows) apart.
_TOWER = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    initializer_range=0.2,
)
_VISION = dict(_TOWER, image_size=TINY_PX, patch_size=16)


def _seeded(build: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    """Build a model from a fixed seed without touching the caller's RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        return build().eval()


def _vocab(specials: dict[int, str], size: int | None = None) -> dict[str, int]:
    """Token -> id: special tokens at the given ids, WORDS and then fillers everywhere else."""
    size = size or len(specials) + len(WORDS)
    words = iter(WORDS)
    return {specials.get(i) or next(words, f"w{i}"): i for i in range(size)}


def _word_level(vocab: dict[str, int], unk: str, template: str | None = None) -> Tokenizer:
    """A lower-casing, whitespace-splitting WordLevel tokenizer; `template` adds BOS/EOS tokens."""
    tok = Tokenizer(models.WordLevel(vocab, unk_token=unk))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    if template:
        specials = [(t, vocab[t]) for t in template.split() if t != "$A"]
        tok.post_processor = processors.TemplateProcessing(single=template, special_tokens=specials)
    return tok


def _fast_tokenizer(tok: Tokenizer, max_length: int, **special_tokens):
    """Wrap a `tokenizers` object; every special token is registered, so decode can skip it."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=tok, model_max_length=max_length, **special_tokens
    )


def _save(path: str | Path, model, tokenizer, image_processor) -> str:
    from transformers.utils import logging

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    bar = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        model.save_pretrained(path)
    finally:
        if bar:
            logging.enable_progress_bar()
    tokenizer.save_pretrained(path)
    image_processor.save_pretrained(path)
    return str(path)


# --- BERT-style captioners (BLIP, GIT, VisionEncoderDecoder) --------------------------------------

_BERT_SPECIALS = dict(
    pad_token="[PAD]",
    unk_token="[UNK]",
    cls_token="[CLS]",
    sep_token="[SEP]",
    mask_token="[MASK]",
    bos_token="[DEC]",  # BLIP starts captions with [DEC]
)


def _bert_tokenizer(vocab: dict[str, int], max_length: int = 64, **extra):
    return _fast_tokenizer(_word_level(vocab, "[UNK]"), max_length, **_BERT_SPECIALS, **extra)


def _tiny_bert_vocab() -> dict[str, int]:
    return _vocab(dict(enumerate(_BERT_SPECIALS.values())))


def build_tiny_blip(path: str | Path) -> str:
    """BLIP captioner: 32-wide, 2-layer ViT and BERT decoder, 64 px, square resize."""
    from transformers import BlipConfig, BlipForConditionalGeneration, BlipImageProcessor

    vocab = _tiny_bert_vocab()
    text = dict(
        _TOWER,
        vocab_size=len(vocab),
        max_position_embeddings=64,
        encoder_hidden_size=32,
        bos_token_id=vocab["[DEC]"],
        sep_token_id=vocab["[SEP]"],
        eos_token_id=vocab["[SEP]"],
        pad_token_id=vocab["[PAD]"],
    )
    config = BlipConfig(
        vision_config=_VISION, text_config=text, projection_dim=32, image_text_hidden_size=32
    )
    model = _seeded(lambda: BlipForConditionalGeneration(config))
    processor = BlipImageProcessor(size={"height": TINY_PX, "width": TINY_PX})
    return _save(path, model, _bert_tokenizer(vocab), processor)


def build_tiny_git(path: str | Path) -> str:
    """GIT captioner (decoder-only over image tokens): CLIP-style shortest-side + center crop."""
    from transformers import GitConfig, GitForCausalLM

    vocab = _tiny_bert_vocab()
    config = GitConfig(
        vision_config=_VISION,
        vocab_size=len(vocab),
        max_position_embeddings=64,
        bos_token_id=vocab["[CLS]"],
        eos_token_id=vocab["[SEP]"],
        pad_token_id=vocab["[PAD]"],
        **_TOWER,
    )
    model = _seeded(lambda: GitForCausalLM(config))
    return _save(path, model, _bert_tokenizer(vocab), _clip_processor(TINY_PX))


def build_tiny_vision_encoder_decoder(path: str | Path) -> str:
    """VisionEncoderDecoder: a ViT encoder and a BERT decoder with cross-attention."""
    from transformers import (
        BertConfig,
        VisionEncoderDecoderConfig,
        VisionEncoderDecoderModel,
        ViTConfig,
        ViTImageProcessor,
    )

    vocab = _tiny_bert_vocab()
    special_ids = dict(
        decoder_start_token_id=vocab["[CLS]"],
        eos_token_id=vocab["[SEP]"],
        pad_token_id=vocab["[PAD]"],
    )
    decoder = BertConfig(
        vocab_size=len(vocab),
        max_position_embeddings=64,
        is_decoder=True,
        add_cross_attention=True,
        pad_token_id=vocab["[PAD]"],
        **_TOWER,
    )
    config = VisionEncoderDecoderConfig.from_encoder_decoder_configs(ViTConfig(**_VISION), decoder)
    for key, value in special_ids.items():
        setattr(config, key, value)
    model = _seeded(lambda: VisionEncoderDecoderModel(config=config))
    for key, value in special_ids.items():
        setattr(model.generation_config, key, value)
    processor = ViTImageProcessor(size={"height": TINY_PX, "width": TINY_PX})
    return _save(path, model, _bert_tokenizer(vocab), processor)


# --- joint embedders (CLIP, SigLIP, SigLIP 2) -----------------------------------------------------

_CLIP_BOS, _CLIP_EOS = "<|startoftext|>", "<|endoftext|>"


def _clip_processor(px: int | None = None):
    from transformers import CLIPImageProcessor

    if px is None:  # the real CLIP defaults: 224 shortest side, 224 center crop
        return CLIPImageProcessor()
    return CLIPImageProcessor(size={"shortest_edge": px}, crop_size={"height": px, "width": px})


def _clip_word_level(vocab: dict[str, int], max_length: int):
    """CLIP's token layout: <|startoftext|> words <|endoftext|>, padded with <|endoftext|>."""
    tok = _word_level(vocab, _CLIP_EOS, template=f"{_CLIP_BOS} $A {_CLIP_EOS}")
    return _fast_tokenizer(
        tok,
        max_length,
        bos_token=_CLIP_BOS,
        eos_token=_CLIP_EOS,
        pad_token=_CLIP_EOS,
        unk_token=_CLIP_EOS,
    )


def _clip_text_ids(vocab: dict[str, int]) -> dict:
    """The ids CLIP's text tower pools at (the first <|endoftext|>) and pads with."""
    eos = vocab[_CLIP_EOS]
    return dict(bos_token_id=vocab[_CLIP_BOS], eos_token_id=eos, pad_token_id=eos)


def build_tiny_clip(path: str | Path) -> str:
    """CLIP embedder: 32-wide, 2-layer towers, 32-d joint space, 64 px shortest side + crop."""
    from transformers import CLIPConfig, CLIPModel

    vocab = _vocab({0: _CLIP_BOS, 1: _CLIP_EOS})
    text = dict(_TOWER, vocab_size=len(vocab), max_position_embeddings=32, **_clip_text_ids(vocab))
    config = CLIPConfig(text_config=text, vision_config=_VISION, projection_dim=32)
    model = _seeded(lambda: CLIPModel(config))
    return _save(path, model, _clip_word_level(vocab, 32), _clip_processor(TINY_PX))


def build_tiny_siglip(path: str | Path) -> str:
    """SigLIP embedder: text padded to max length, last-token pooling, square resize, mean 0.5."""
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel

    vocab = _vocab({0: "<pad>", 1: "</s>", 2: "<unk>"})
    tok = _word_level(vocab, "<unk>", template="$A </s>")
    tokenizer = _fast_tokenizer(tok, 32, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    text = dict(
        _TOWER,
        vocab_size=len(vocab),
        max_position_embeddings=32,
        pad_token_id=vocab["<pad>"],
        eos_token_id=vocab["</s>"],
        bos_token_id=vocab["</s>"],
    )
    config = SiglipConfig(text_config=text, vision_config=_VISION)
    model = _seeded(lambda: SiglipModel(config))
    processor = SiglipImageProcessor(size={"height": TINY_PX, "width": TINY_PX})
    return _save(path, model, tokenizer, processor)


def build_tiny_siglip2(path: str | Path) -> str:
    """SigLIP 2 NaFlex embedder: variable resolution (up to 256 patches of 16 px, the processor's
    own defaults), text padded to max length with its attention mask, a Siglip2Processor."""
    from transformers import Siglip2Config, Siglip2ImageProcessor, Siglip2Model, Siglip2Processor

    vocab = _vocab({0: "<pad>", 1: "</s>", 2: "<unk>"})
    tok = _word_level(vocab, "<unk>", template="$A </s>")
    tokenizer = _fast_tokenizer(tok, 16, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    tokenizer.model_input_names = ["input_ids", "attention_mask"]
    ids = dict(pad_token_id=vocab["<pad>"], eos_token_id=vocab["</s>"], bos_token_id=vocab["</s>"])
    text = dict(_TOWER, vocab_size=len(vocab), max_position_embeddings=16, **ids)
    vision = dict(_TOWER, patch_size=16, num_patches=256)
    model = _seeded(lambda: Siglip2Model(Siglip2Config(text_config=text, vision_config=vision)))
    processor = Siglip2Processor(
        image_processor=Siglip2ImageProcessor(patch_size=16, max_num_patches=256),
        tokenizer=tokenizer,
    )
    path = Path(path)
    _save(path, model, tokenizer, processor.image_processor)
    processor.save_pretrained(path)
    return str(path)


# --- full-size architectures with random weights (GPU benchmarks) ---------------------------------


def build_full_size_blip_base(path: str | Path) -> str:
    """Salesforce/blip-image-captioning-base's architecture (ViT-B/16 at 384 px, BERT-base decoder,
    30524-token vocabulary), random weights. The tokenizer is WordLevel over the same vocab size
    and special-token ids ([PAD] 0, [SEP] 102, [DEC] 30522), so generation costs the same."""
    from transformers import BlipConfig, BlipForConditionalGeneration, BlipImageProcessor

    config = BlipConfig()
    text = config.text_config
    specials = {0: "[PAD]", 100: "[UNK]", 101: "[CLS]", 102: "[SEP]", 103: "[MASK]"}
    specials |= {text.bos_token_id: "[DEC]", text.vocab_size - 1: "[ENC]"}
    vocab = _vocab(specials, text.vocab_size)
    text.eos_token_id = text.sep_token_id
    model = _seeded(lambda: BlipForConditionalGeneration(config))
    tokenizer = _bert_tokenizer(vocab, 512, additional_special_tokens=["[ENC]"])
    return _save(path, model, tokenizer, BlipImageProcessor())


def build_full_size_clip_b32(path: str | Path) -> str:
    """openai/clip-vit-base-patch32's architecture (512-d joint space, 224 px), random weights.
    Uses OpenAI's real BPE vocabulary when `open_clip_torch` is installed (it ships the file),
    else a WordLevel tokenizer of the same size and special-token ids."""
    from transformers import CLIPConfig, CLIPModel

    config = CLIPConfig()
    size = config.text_config.vocab_size
    vocab = _vocab({size - 2: _CLIP_BOS, size - 1: _CLIP_EOS}, size)
    for key, value in _clip_text_ids(vocab).items():
        setattr(config.text_config, key, value)
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    bpe = _open_clip_bpe_file()
    tokenizer = _clip_bpe_tokenizer(bpe, path) if bpe else _clip_word_level(vocab, 77)
    model = _seeded(lambda: CLIPModel(config))
    return _save(path, model, tokenizer, _clip_processor())


def _open_clip_bpe_file() -> Path | None:
    """open_clip's copy of OpenAI's BPE merges, found without importing open_clip (and timm)."""
    spec = importlib.util.find_spec("open_clip")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(folder) / "bpe_simple_vocab_16e6.txt.gz"
        if candidate.exists():
            return candidate
    return None


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable-character table."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    bs += range(ord("®"), ord("ÿ") + 1)
    cs = list(bs)
    extra = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + extra)
            extra += 1
    return dict(zip(bs, map(chr, cs), strict=True))


def _clip_bpe_tokenizer(bpe_gz: Path, folder: Path):
    """OpenAI CLIP's tokenizer from its BPE merges file (same construction as OpenAI's code)."""
    from transformers import CLIPTokenizer

    merges = gzip.open(bpe_gz).read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
    chars = list(_bytes_to_unicode().values())
    vocab = chars + [c + "</w>" for c in chars] + ["".join(m.split()) for m in merges]
    vocab += [_CLIP_BOS, _CLIP_EOS]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return CLIPTokenizer.from_pretrained(folder, model_max_length=77)


# --- image classifiers (--score NAME=MODEL:LABEL) -------------------------------------------------

CLASSIFIER_LABELS = ("safe", "nsfw", "watermark")


def build_tiny_classifier(path: str | Path) -> str:
    """A tiny random ViT image classifier whose labels are CLASSIFIER_LABELS."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    config = ViTConfig(
        **_VISION,
        num_labels=len(CLASSIFIER_LABELS),
        id2label=dict(enumerate(CLASSIFIER_LABELS)),
        label2id={label: i for i, label in enumerate(CLASSIFIER_LABELS)},
    )
    model = _seeded(lambda: ViTForImageClassification(config))
    processor = ViTImageProcessor(size={"height": TINY_PX, "width": TINY_PX})
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return str(path)
