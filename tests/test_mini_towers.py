"""vlpipe-mini's pretrained towers: the EfficientNet-Lite0/1/2 weights load strictly and
recognise ImageNet classes on real photos; staged execution composes; MiniLM embeds sentences
sensibly."""

from __future__ import annotations

import csv
import re

import numpy as np
import pytest
import torch
from PIL import Image

from tests.helpers.paths import flickr_split
from vlpipe.models.mini.efficientnet import STAGE_SHAPES, EfficientNetLite, normalize_pixels
from vlpipe.models.mini.model import preprocess_image

DOG_CLASSES = range(151, 269)  # ImageNet-1k dog breeds
DOG_WORDS = re.compile(r"\b(dog|dogs|puppy|puppies)\b")


@pytest.fixture(scope="module")
def tower() -> EfficientNetLite:
    torch.set_num_threads(2)
    return EfficientNetLite.pretrained()


@pytest.fixture(scope="module")
def lite1() -> EfficientNetLite:
    return EfficientNetLite.pretrained("lite1")


@pytest.fixture(scope="module")
def lite2() -> EfficientNetLite:
    return EfficientNetLite.pretrained("lite2")


def _dog_photos(root, limit: int) -> list[str]:
    """Dev photos whose captions all name a dog (no ambiguity about the subject)."""
    dev = set(flickr_split(root, "dev"))
    caps: dict[str, list[str]] = {}
    with open(root / "captions.csv", newline="") as f:
        for row in csv.DictReader(f):
            if row["image"] in dev:
                caps.setdefault(row["image"], []).append(row["caption"].lower())
    names = [n for n in sorted(caps) if all(DOG_WORDS.search(c) for c in caps[n])]
    return names[:limit]


@pytest.mark.parametrize("name", ["lite0", "lite1", "lite2"])
def test_dog_photos_get_dog_classes(flickr, request, name):
    model = request.getfixturevalue("tower" if name == "lite0" else name)
    names = _dog_photos(flickr, 40)
    assert len(names) == 40
    side = model.image_size
    pixels = torch.stack([preprocess_image(Image.open(flickr / "images" / n), side) for n in names])
    with torch.inference_mode():
        top5 = model(normalize_pixels(pixels)).topk(5, dim=-1).indices
    hits = np.mean([any(int(c) in DOG_CLASSES for c in row) for row in top5])
    # 118 of 1000 classes are dogs: chance of a dog in a random top-5 is about 0.47.
    # Measured with the strict load: 0.95 (Lite0), 0.975 (Lite1), 0.975 (Lite2) on these 40.
    assert hits >= 0.85


@pytest.mark.parametrize("name, side, grid", [("lite1", 240, 8), ("lite2", 260, 9)])
def test_deeper_towers_compose(request, name, side, grid):
    """Lite1 and Lite2: 21 blocks instead of 16, a larger grid from their larger input."""
    model = request.getfixturevalue(name)
    assert len(model._blocks) == 21 and model.image_size == side
    x = normalize_pixels(torch.randint(0, 256, (1, 3, side, side), dtype=torch.uint8))
    with torch.inference_mode():
        full = model.grid(x)
        assert full.shape == (1, 1280, grid, grid)
        torch.testing.assert_close(model.forward_from(model.forward_until(x, 5), 5), full)


def test_staged_forward_composes(tower):
    x = normalize_pixels(torch.randint(0, 256, (2, 3, 224, 224), dtype=torch.uint8))
    with torch.inference_mode():
        full = tower.grid(x)
        assert full.shape == (2, 1280, 7, 7)
        for stage in (1, 5, 6, 7):
            h = tower.forward_until(x, stage)
            if stage < 7:
                assert (
                    h.shape[1:] == (STAGE_SHAPES[stage - 1][0],) + (STAGE_SHAPES[stage - 1][1],) * 2
                )
            torch.testing.assert_close(tower.forward_from(h, stage), full, rtol=1e-4, atol=1e-4)


def test_folded_batchnorm_gives_the_same_grid(tower):
    """The inference tower (BN folded into the convs) computes what the trainable one does."""
    import copy

    from vlpipe.models.mini.efficientnet import fuse_batchnorm

    fused = fuse_batchnorm(copy.deepcopy(tower))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    x = normalize_pixels(torch.randint(0, 256, (2, 3, 224, 224), dtype=torch.uint8))
    with torch.inference_mode():
        expected = tower.grid(x)
        torch.testing.assert_close(fused.grid(x), expected, rtol=1e-4, atol=1e-4)
        odd = torch.zeros(1, 3, 225, 231)
        torch.testing.assert_close(fused.grid(odd), tower.grid(odd), rtol=1e-4, atol=1e-4)


def test_tail_holds_only_the_trainable_modules(tower):
    names = set(tower.tail(6).state_dict())
    assert any(n.startswith("15.") for n in names) and "_conv_head.weight" in names
    assert not any(n.startswith("14.") for n in names)
    assert set(tower.tail(7).state_dict()) == {n for n in names if not n.startswith("15.")}


def test_tf_same_padding_on_odd_sizes(tower):
    with torch.inference_mode():
        grid = tower.grid(torch.zeros(1, 3, 225, 231))
    assert grid.shape[-2:] == (8, 8)  # ceil(225 / 32), ceil(231 / 32)


def test_preprocess_any_image_to_uint8_224():
    out = preprocess_image(Image.new("L", (300, 120), 77))
    assert out.dtype == torch.uint8 and out.shape == (3, 224, 224)
    assert int(out.float().mean()) == 77


def test_minilm_sentence_embeddings():
    from vlpipe.models.mini.text import MiniLM

    emb = MiniLM().encode(["a dog runs on the grass", "a puppy plays in a field", "a red car"])
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(3))
    sims = emb @ emb.T
    assert sims[0, 1] > sims[0, 2] + 0.2
