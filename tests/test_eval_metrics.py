"""Recall@K, BLEU-4 and CIDEr-D against cases worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from vlpipe.eval.metrics import caption_scores, retrieval_recalls, tokenize

# Three images on the axes; four captions, two of them for image 2.
IMAGES = np.eye(3, dtype=np.float32)
TEXTS = np.array(
    [
        [1.0, 0.0, 0.0],  # q0, of image 0: sims (1, 0, 0)     -> no other image above: rank 0
        [0.0, 0.6, 0.8],  # q1, of image 1: sims (0, .6, .8)   -> image 2 above:        rank 1
        [0.8, 0.6, 0.0],  # q2, of image 2: sims (.8, .6, 0)   -> images 0, 1 above:    rank 2
        [0.0, 0.0, 1.0],  # q3, of image 2: sims (0, 0, 1)                              rank 0
    ],
    dtype=np.float32,
)
QUERY_IMAGE = np.array([0, 1, 2, 2])


def test_recalls_match_hand_ranks():
    got = retrieval_recalls(TEXTS, IMAGES, QUERY_IMAGE, ks=(1, 2, 3))
    # text -> image ranks (0, 1, 2, 0)
    assert got["t2i_r1"] == pytest.approx(2 / 4)
    assert got["t2i_r2"] == pytest.approx(3 / 4)
    assert got["t2i_r3"] == pytest.approx(1.0)
    # image -> text: image 0 sees captions (1, 0, .8, 0): its q0 is first            -> rank 0
    # image 1 sees (0, .6, .6, 0): q2 (image 2's) ties its q1 and ties count against -> rank 1
    # image 2 sees (0, .8, 0, 1): its q3 is first (q2 scoring 0 does not matter)     -> rank 0
    assert got["i2t_r1"] == pytest.approx(2 / 3)
    assert got["i2t_r2"] == pytest.approx(1.0)
    assert set(got) == {"t2i_r1", "t2i_r2", "t2i_r3", "i2t_r1", "i2t_r2", "i2t_r3"}


def test_constant_embeddings_get_no_credit_below_k_equal_n():
    n = 5
    same = np.tile(np.array([[1.0, 0.0]], dtype=np.float32), (n, 1))
    got = retrieval_recalls(same, same, np.arange(n), ks=(1, 4, 5))
    assert got["t2i_r1"] == 0.0 and got["t2i_r4"] == 0.0 and got["t2i_r5"] == 1.0
    assert got["i2t_r1"] == 0.0 and got["i2t_r5"] == 1.0


def _recalls_by_sorting(text, image, query_image, k):
    """The textbook definition, one query at a time, for random (tie-free) data."""
    t2i = [query_image[q] in np.argsort(-(image @ text[q]))[:k] for q in range(len(text))]
    i2t = []
    for n in sorted(set(query_image)):
        top = np.argsort(-(text @ image[n]))[:k]
        i2t.append(any(query_image[q] == n for q in top))
    return np.mean(t2i), np.mean(i2t)


def test_recalls_agree_with_sorting_on_random_data():
    rng = np.random.default_rng(0)
    image = rng.normal(size=(40, 8)).astype(np.float32)
    query_image = rng.integers(0, 40, size=120)
    text = image[query_image] + rng.normal(scale=1.5, size=(120, 8)).astype(np.float32)
    image /= np.linalg.norm(image, axis=1, keepdims=True)
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    got = retrieval_recalls(text, image, query_image, ks=(1, 5, 10))
    for k in (1, 5, 10):
        t2i, i2t = _recalls_by_sorting(text, image, query_image, k)
        assert got[f"t2i_r{k}"] == pytest.approx(t2i)
        assert got[f"i2t_r{k}"] == pytest.approx(i2t)
    assert 0 < got["t2i_r1"] < got["t2i_r10"] < 1  # the case is neither trivial nor hopeless


def test_recalls_reject_bad_shapes():
    with pytest.raises(ValueError):
        retrieval_recalls(TEXTS, IMAGES, np.array([0, 1, 2]))
    with pytest.raises(ValueError):
        retrieval_recalls(TEXTS, IMAGES, np.array([0, 1, 2, 3]))


def test_tokenize_lowercases_and_drops_punctuation():
    assert tokenize("A dog's  ball, in  the PARK .") == "a dog s ball in the park"


def test_bleu4_with_brevity_penalty_by_hand():
    candidates = {"a": "The cat sat on the mat.", "b": "A dog runs"}
    references = {
        "a": ["the cat sat on the red mat today"],
        "b": ["a dog runs", "a big dog runs fast"],
        "unused": ["nothing here"],
    }
    # Clipped n-gram matches / candidate n-grams, summed over the corpus:
    #   a: 1-grams 6/6, 2-grams 4/5 ("the mat" is missing), 3-grams 3/4, 4-grams 2/3
    #   b: 1-grams 3/3, 2-grams 2/2, 3-grams 1/1, 4-grams 0/0
    precisions = [9 / 9, 6 / 7, 4 / 5, 2 / 3]
    # Candidate length 6 + 3 = 9; closest reference lengths 8 + 3 = 11 -> brevity penalty.
    expected = math.exp(1 - 11 / 9) * math.prod(precisions) ** 0.25
    got = caption_scores(candidates, references)
    assert got["bleu4"] == pytest.approx(expected, rel=1e-6)


def test_cider_d_on_a_tiny_corpus_by_hand():
    candidates = {"a": "a dog dog", "b": "a cat"}
    references = {"a": ["a dog"], "b": ["a cat"]}
    # Document frequencies over the 2 images' references: a=2, dog=1, cat=1, "a dog"=1, "a cat"=1;
    # idf(g) = log(2) - log(max(1, df(g))): idf(a) = 0, every other n-gram log 2 (unseen ones too).
    # Image a, tf-idf vectors (candidate | reference), L = log 2; the L's cancel in the cosines:
    #   1-grams: dog 2L, a 0 | dog L, a 0      clipped dot min(2L, L) * L = L^2, norms 2L, L -> 1/2
    #   2-grams: "a dog" L, "dog dog" L | "a dog" L           dot L^2, norms sqrt(2) L, L -> 1/sqrt2
    #   3-grams: "a dog dog" L | nothing (norm 0)                                         -> 0
    #   4-grams: none                                                                     -> 0
    # Gaussian length penalty exp(-(3 - 2)^2 / (2 * 6^2)); one reference; x10.
    score_a = 10 * (0.5 + 1 / math.sqrt(2) + 0 + 0) / 4 * math.exp(-1 / 72)
    # Image b: the candidate is its reference: cosine 1 for 1- and 2-grams, nothing above.
    score_b = 10 * (1 + 1 + 0 + 0) / 4
    got = caption_scores(candidates, references)
    assert got["cider"] == pytest.approx((score_a + score_b) / 2, rel=1e-6)


def test_caption_scores_skip_unreferenced_candidates_and_need_one():
    refs = {"a": ["a cat"]}
    assert caption_scores({"a": "a cat", "zzz": "whatever"}, refs) == caption_scores(
        {"a": "a cat"}, refs
    )
    with pytest.raises(ValueError):
        caption_scores({"zzz": "a cat"}, refs)
