"""The embedding's training signal: every caption as a positive (multi-positive InfoNCE) and
hard-negative batches of images whose captions are alike. No ../shared needed: synthetic
features whose structure is known."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vlpipe.models.mini.fusion import JointHeads
from vlpipe.train.common import Features
from vlpipe.train.embed import caption_neighbours, epoch_batches, text_batch


def _features(n_images: int, n_caps: list[int], topics: int = 8, seed: int = 0) -> Features:
    """Captions of image i sit near topic i % topics (so images of one topic are alike)."""
    g = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(topics, 384, generator=g), dim=1)
    counts = torch.tensor(n_caps)
    owner = torch.repeat_interleave(torch.arange(n_images), counts)
    text = F.normalize(centres[owner % topics] + 0.05 * torch.randn(len(owner), 384, generator=g))
    return Features(
        grid_in=torch.zeros(n_images, 1, 1, 1),
        text=text.half(),
        text_image=owner,
        first_caption=torch.cumsum(counts, 0) - counts,
        n_captions=counts,
    )


def test_all_captions_come_with_their_owner():
    feats = _features(6, [5, 1, 3, 5, 2, 4])
    images = torch.tensor([4, 0, 2])
    text, owner = text_batch(feats, images, all_captions=True)
    assert len(text) == 2 + 5 + 3 and owner.tolist() == [0, 0, 1, 1, 1, 1, 1, 2, 2, 2]
    # each row is one of its image's own captions, each caption once
    rows = [int((feats.text.float() == t).all(1).nonzero()[0]) for t in text]
    assert sorted(rows) == sorted({*rows})
    assert [int(feats.text_image[r]) for r in rows] == [int(images[o]) for o in owner]
    one, none = text_batch(feats, images, all_captions=False)
    assert none is None and len(one) == 3


def test_multi_positive_loss_rewards_every_caption():
    """With one caption per image it is plain InfoNCE; with several, moving one positive away
    from its image costs loss."""
    torch.manual_seed(0)
    heads = JointHeads(8, 8, 8, 16, 0.0)
    image = F.normalize(torch.randn(4, 8), dim=1)
    text = F.normalize(torch.randn(4, 8), dim=1)
    assert torch.allclose(heads.loss(image, text, torch.arange(4)), heads.loss(image, text))
    owner = torch.tensor([0, 0, 1, 2, 3])
    aligned = torch.cat([image[:1], image])  # both captions of image 0 on it
    worse = aligned.clone()
    worse[1] = image[3]  # the second caption of image 0 points at image 3
    assert heads.loss(image, aligned, owner) < heads.loss(image, worse, owner) - 0.5


def test_hard_batches_group_alike_images_without_repeats():
    feats = _features(512, [5] * 512, topics=16)
    images = torch.arange(512)
    near = caption_neighbours(feats, images, k=16)
    topic = images % 16
    assert (topic[near] == topic[:, None]).float().mean() > 0.95  # neighbours share the topic
    assert not (near == images[:, None]).any()

    def same_topic_share(batches):
        return sum((topic[b][:, None] == topic[b][None]).float().mean() for b in batches) / len(
            batches
        )

    torch.manual_seed(0)
    plain = epoch_batches(images, 64, 0.0, near)
    hard = epoch_batches(images, 64, 1.0, near)
    assert sorted(torch.cat(plain).tolist()) == list(range(512))  # a permutation, cut
    for b in hard:
        assert len(b) == 64 and len(set(b.tolist())) == 64
    # random batches: about 1/16 of pairs share a topic; groups of 8 neighbours: about 3x that
    assert same_topic_share(plain) < 0.1 and same_topic_share(hard) > 0.14


def test_a_corpus_smaller_than_k_still_batches():
    feats = _features(3, [2, 2, 2])
    near = caption_neighbours(feats, torch.arange(3), k=16)
    assert near.shape == (3, 2)
    batches = epoch_batches(torch.arange(3), 3, 1.0, near)
    assert [sorted(b.tolist()) for b in batches] == [[0, 1, 2]]
