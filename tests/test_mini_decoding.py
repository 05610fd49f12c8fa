"""vlpipe-mini's beam search gives the plain algorithm's captions token for token, while each
image leaves the batch when its beams have ended and cross-attention runs once per image."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from tests.helpers.beam_reference import plain_beam_search
from vlpipe.models.mini import decoding
from vlpipe.models.mini.model import load_mini

EXAMPLES = sorted((Path(__file__).parent.parent / "examples" / "images").glob("*.jpg"))[:10]


@pytest.fixture(scope="module")
def shipped():
    model = load_mini(device="cpu", precision="fp32", backend="torch")
    pixels = torch.stack([model.preprocess(Image.open(p)) for p in EXAMPLES])
    with torch.inference_mode():
        return model, model.memory(model.grid(pixels))


@pytest.mark.parametrize("beams", [1, 3])
def test_beam_search_gives_the_plain_algorithms_tokens(shipped, beams):
    model, memory = shipped
    with torch.inference_mode():
        got = model.decoder.generate(memory, beams, 30)
        assert got == plain_beam_search(model.decoder, memory, beams, 30)
        short = model.decoder.generate(memory, beams, 3)
        assert short == plain_beam_search(model.decoder, memory, beams, 3)
    assert len({len(ids) for ids in got}) > 2  # captions of several lengths: images left early


def test_finished_images_leave_the_batch(shipped):
    model, memory = shipped
    rows: list[int] = []

    class Counting(decoding.CachedStep):
        def __call__(self, tokens):
            rows.append(tokens.shape[0])
            return super().__call__(tokens)

    with torch.inference_mode():
        ids = decoding.beam_search(model.decoder, memory, 3, 30, step_cls=Counting)
    assert ids == model.decoder.generate(memory, 3, 30)
    assert rows[0] == 3 * len(EXAMPLES)
    assert rows[-1] < rows[0] and rows == sorted(rows, reverse=True)


def test_cross_attention_keys_are_per_image_not_per_beam(shipped):
    model, memory = shipped
    with torch.inference_mode():
        step = decoding.CachedStep(model.decoder, memory, beams=3)
    assert all(k.shape[0] == len(EXAMPLES) for k, _ in step.cross)
