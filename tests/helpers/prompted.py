"""Tiny prompted captioners (LLaVA, Qwen2-VL, Idefics3 / SmolVLM, PaliGemma, ...) built offline,
a small corpus, and the readers the prompted tests share. The two session fixtures are a pytest
plugin (tests/conftest.py), so every prompted test module shares one build of the tiny models."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from PIL import Image

from tests.helpers.images import image_bytes
from vlpipe.cli import main
from vlpipe.rundir import RunDir


@pytest.fixture(scope="session")
def prompted_dirs(tmp_path_factory) -> dict[str, str]:
    """Family name (bench.hf_tiny_prompted.FAMILIES, and "clip", "blip") -> the folder of its
    tiny random model. (Imported here, not at the top: every test session loads this plugin.)"""
    from bench import hf_tiny_prompted
    from bench.hf_tiny import build_tiny_blip, build_tiny_clip

    root = tmp_path_factory.mktemp("prompted")
    out = {f: hf_tiny_prompted.build(f, root / f) for f in hf_tiny_prompted.FAMILIES}
    out["clip"] = build_tiny_clip(root / "clip")
    out["blip"] = build_tiny_blip(root / "blip")
    return out


@pytest.fixture(scope="session")
def prompted_corpus(tmp_path_factory):
    """Five small images of different sizes and a broken file."""
    root = tmp_path_factory.mktemp("corpus")
    for i, size in enumerate([(50, 40), (30, 45), (56, 56), (40, 40), (44, 30)]):
        (root / f"img{i}.png").write_bytes(image_bytes(size, "PNG", i))
    (root / "broken.jpg").write_bytes(b"not an image")
    return root


def small_images() -> list[Image.Image]:
    """Under every tiny processor's pixel bound (so vlpipe's preprocess keeps them as they are),
    of different sizes (so Idefics3 tiles them differently and the batch is padded) and far
    apart (dark noise, bright noise, two flat halves), so tiny models tell them apart."""
    rng = np.random.default_rng(3)
    dark = rng.integers(0, 80, (40, 50, 3), dtype=np.uint8)
    bright = rng.integers(170, 256, (56, 30, 3), dtype=np.uint8)
    halves = np.zeros((32, 32, 3), np.uint8)
    halves[:16] = (250, 20, 20)
    halves[16:] = (20, 20, 250)
    return [Image.fromarray(a) for a in (dark, bright, halves)]


def read_rows(output) -> list[dict]:
    run_dir = RunDir(str(output))
    return [r for p in run_dir.parts() for r in pq.read_table(run_dir.fs.open(p)).to_pylist()]


def cli(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


def count_image_processor_calls(monkeypatch, captioner) -> list[int]:
    """A list that grows by one per call of the captioner's image processor (patched on its
    class for the test's duration)."""
    cls = type(captioner.processor.image_processor)
    calls: list[int] = []
    original = cls.__call__

    def counting(self, *args, **kw):
        calls.append(1)
        return original(self, *args, **kw)

    monkeypatch.setattr(cls, "__call__", counting)
    return calls


def count_vision_passes(monkeypatch, model_cls) -> list[int]:
    """The batch size of each `get_image_features` call on `model_cls` (the vision tower's pass),
    patched for the test's duration; the wrapper keeps the signature generate reads."""
    import functools

    encode = model_cls.get_image_features
    encoded: list[int] = []

    @functools.wraps(encode)
    def counting(self, pixel_values, *args, **kw):
        encoded.append(len(pixel_values))
        return encode(self, pixel_values, *args, **kw)

    monkeypatch.setattr(model_cls, "get_image_features", counting)
    return encoded


def assert_captions_decode(captioner, pixels, tokenizer, token_ids: list[list[int]]) -> None:
    """The captioner's captions of `pixels` are `token_ids` decoded (a plain generate's new
    tokens), stripped, with no special token left in them."""
    captions = captioner.caption(pixels, max_tokens=8)
    expected = tokenizer.batch_decode(token_ids, skip_special_tokens=True)
    assert captions == [t.strip() for t in expected]
    specials = set(tokenizer.all_special_tokens)
    for caption in captions:
        assert not specials & set(caption.split())
        assert caption == caption.strip()
